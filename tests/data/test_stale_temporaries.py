"""A preparation killed while sharding leaves its temporary directory; the next one removes it, but never the
directory of a preparation that is still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from core.atomic import atomic_directory, remove_stale_temporaries
from data.prepare_data import prepare_dataset
from data.shards import load_manifest

ROOT = Path(__file__).resolve().parents[2]

# Runs prepare_dataset and stops for good right after the first shard file is complete (the parent kills it).
STOP_WHILE_SHARDING = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import data.shards
    from data.prepare_data import prepare_dataset

    close = data.shards.SplitWriter._close

    def close_then_hang(self):
        close(self)
        print("sharding", flush=True)
        time.sleep(600)

    data.shards.SplitWriter._close = close_then_hang
    prepare_dataset([sys.argv[2]], sys.argv[3], tokenizer_dir=sys.argv[4], workers=1, progress=False,
                    shard_tokens=300)
""")


def start_preparation(corpus: Path, out: Path, tokenizer_dir: Path) -> subprocess.Popen:
    """A prepare_data run in another process, returned once it is in the middle of writing shards."""
    proc = subprocess.Popen([sys.executable, "-c", STOP_WHILE_SHARDING, str(ROOT), str(corpus), str(out),
                             str(tokenizer_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "sharding\n"
    return proc


def temporaries(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".tmp-{name}-*"))


def test_a_killed_preparation_is_cleaned_up_by_the_next_one_but_a_running_one_is_not(
        tmp_path, corpus_dir, data_tokenizer):
    killed = start_preparation(corpus_dir, tmp_path / "ds", data_tokenizer.directory)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    (stale,) = temporaries(tmp_path, "ds")
    assert f"-{killed.pid}@" in stale.name  # the owner is in the name
    assert (stale / "train_000000.bin").is_file() and not (stale / "manifest.json").exists()
    assert not (tmp_path / "ds").exists()

    running = start_preparation(corpus_dir, tmp_path / "other", data_tokenizer.directory)
    try:
        (live,) = temporaries(tmp_path, "other")
        out = prepare_dataset([str(corpus_dir)], tmp_path / "ds", tokenizer_dir=data_tokenizer.directory,
                              workers=1, progress=False)
        assert load_manifest(out)["documents"]["total"] > 0
        assert temporaries(tmp_path, "ds") == []  # the killed run's leftovers are gone
        assert temporaries(tmp_path, "other") == [live] and (live / "train_000000.bin").is_file()  # still working
    finally:
        running.kill()
        running.wait(timeout=30)
    prepare_dataset([str(corpus_dir)], tmp_path / "ds", tokenizer_dir=data_tokenizer.directory, workers=1,
                    progress=False, force=True)
    assert temporaries(tmp_path, "other") == []  # its owner is gone now


def test_only_dead_owners_on_this_host_count(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    with atomic_directory(tmp_path / "ds") as own:
        host = own.name.rpartition("@")[2]  # this host, as atomic_directory spells it
        check_owners(tmp_path, own, host, dead_pid)


def check_owners(tmp_path: Path, own: Path, host: str, dead_pid: int) -> None:
    names = {
        "dead": f".tmp-ds-0123abcd-{dead_pid}@{host}",
        "alive": f".tmp-ds-0123abcd-{os.getpid()}@{host}",  # this process
        "other_host": f".tmp-ds-0123abcd-{dead_pid}@not-{host}",
        "old_format": ".tmp-ds-0123abcd",  # written before names recorded their owner: unknown, kept
        "dashes": f".tmp-my-data-set-89abcdef-{dead_pid}@{host}",
    }
    earlier = own.stat().st_mtime - 60
    for name in names.values():
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (earlier, earlier))  # left before the caller's own run began
    removed = remove_stale_temporaries(tmp_path, own=own)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dashes"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["alive"], names["other_host"],
                                                                 names["old_format"], own.name])
    newer = tmp_path / f".tmp-ds-76543210-{dead_pid}@{host}"
    newer.mkdir()
    os.utime(newer, (own.stat().st_mtime + 60, own.stat().st_mtime + 60))
    assert remove_stale_temporaries(tmp_path, own=own) == []  # newer than the caller's own: not touched
