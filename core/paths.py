"""Checks on output paths made before any work starts, so that a bad --out is one clear error and nothing is
written (a file where a directory should go would otherwise surface as an OSError after minutes of work)."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError


def check_dir_path(path: str | Path, flag: str, error: type[UserError] = UserError) -> None:
    """Raise `error` naming `flag` when `path`, a directory to write, is an existing non-directory or lies below
    one (where creating it would fail with an OSError)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{flag} {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{flag} {path}: {parent} is a file, not a directory")
            return
