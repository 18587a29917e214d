"""core.atomic.atomic_file: the final name appears only complete, and a failed write leaves the old file alone."""

from pathlib import Path

import pytest

from core.atomic import atomic_file


def test_replaces_the_file_only_on_success(tmp_path: Path):
    final = tmp_path / "sub" / "out.bin"
    with atomic_file(final) as tmp:
        tmp.write_bytes(b"first")
        assert not final.exists()  # nothing under the final name while writing
    assert final.read_bytes() == b"first"
    with atomic_file(final) as tmp:
        tmp.write_bytes(b"second")
    assert final.read_bytes() == b"second"
    assert [p.name for p in final.parent.iterdir()] == ["out.bin"]


def test_failure_keeps_the_old_file_and_no_temporary(tmp_path: Path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
