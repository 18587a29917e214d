"""Crash-safe writes: build a directory or file under a temporary name, sync it, rename it into place.

Torch-free, so the tokenizer and data tools can use it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success its files are synced and it is renamed to `final`
    (replacing an older one). On an error, or if the process dies, `final` is untouched; a killed process
    leaves a `.tmp-<name>-*` sibling that the next writer may delete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` for a writer that opens files by name; on success the file is synced
    and renamed to `final` (replacing an older one). On an error `final` is untouched and the temporary file is
    removed; a killed process leaves a `.tmp-<name>-*` sibling."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small text file atomically (write a temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a signal: the old file stays, and no temporary file
        raise


OUTPUT_MARK = ".written-by"  # in a directory a tool wrote: the tool's name, so --overwrite can tell it is its own


def check_output_dir(out: str | Path, inputs: list[str | Path], tool: str, overwrite: bool,
                     flag: str = "--out") -> None:
    """UserError unless `tool` may write the directory `out`: never into or over one of its `inputs` (nor around
    one), and over an existing non-empty directory only with `overwrite` and only when `tool` wrote it."""
    out = Path(out)
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UserError(f"{flag} {out} overlaps the input {given}: write the output outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{flag} {out} already exists and is not empty (pass --overwrite to replace it)")
        mark = out / OUTPUT_MARK
        if not mark.is_file() or mark.read_text(errors="replace").strip() != tool:
            raise UserError(f"--overwrite only replaces a directory that {tool} wrote, and {out} is not one (no "
                            f"{OUTPUT_MARK} naming it): remove it yourself or choose another {flag}")


def mark_output_dir(directory: str | Path, tool: str) -> None:
    """Record that `tool` wrote `directory` (see check_output_dir)."""
    (Path(directory) / OUTPUT_MARK).write_text(tool + "\n")
