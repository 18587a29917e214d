"""Crash-safe writes: build a directory or file under a temporary name, sync it, rename it into place.

Torch-free, so the tokenizer and data tools can use it without importing torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError
from core.lock import process_alive  # the one liveness check (a lock holder's, a writer's)
from core.paths import check_dir_path

# A temporary directory's name says which process owns it, so that a later run can tell a dead writer's leftovers
# from a live writer's work: .tmp-<final name>-<8 hex>-<pid>@<host>. Host names hold no "@", so the name parses
# from the right whatever the final name is.
_TEMPORARY = re.compile(r"\.tmp-.+-[0-9a-f]{8}-(?P<pid>\d+)@(?P<host>[^@]+)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "unknown"


def remove_stale_temporaries(parent: str | Path, own: str | Path | None = None) -> list[Path]:
    """Delete the temporary directories in `parent` that atomic_directory left behind when its process was killed:
    those whose owner process (recorded in the name) ran on this host and is gone, and that are not newer than
    `own` (the caller's own temporary directory). A live writer's directory, another host's, or one of an unknown
    format is kept. Returns the directories removed."""
    parent = Path(parent)
    own = Path(own) if own is not None else None
    newest = own.stat().st_mtime if own is not None else float("inf")
    host, removed = _host(), []
    for path in sorted(parent.glob(".tmp-*")) if parent.is_dir() else []:
        match = _TEMPORARY.fullmatch(path.name)
        if path == own or match is None or match["host"] != host or not path.is_dir():
            continue
        if path.stat().st_mtime <= newest and not process_alive(int(match["pid"]), None):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success its files are synced and it is renamed to `final`
    (replacing an older one). On an error, or if the process dies, `final` is untouched; a killed process
    leaves a `.tmp-<name>-*` sibling naming its pid and host, which remove_stale_temporaries() deletes later."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}-{os.getpid()}@{_host()}"
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


def check_outside_inputs(out: str | Path, inputs: list[str | Path], flag: str = "--out") -> None:
    """UserError when the output directory `out` is one of `inputs`, inside one, or holds one: a tool never writes
    into or over what it reads (replacing the output would delete the input)."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UserError(f"{flag} {out} overlaps the input {given}: write the output outside it")


def check_output_dir(out: str | Path, inputs: list[str | Path], tool: str, overwrite: bool,
                     flag: str = "--out") -> None:
    """UserError unless `tool` may write the directory `out`: never into or over one of its `inputs` (nor around
    one), and over an existing non-empty directory only with `overwrite` and only when `tool` wrote it."""
    out = Path(out)
    check_outside_inputs(out, inputs, flag)
    check_dir_path(out, flag)
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
