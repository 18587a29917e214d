"""One run per out_dir: a second job stops naming the holder; a dead holder's lock is taken over; a directory
that cannot be written is one clear error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.lock import LOCK_FILE, STALE_AFTER, DirectoryLock
from model.checkpoint import load_model
from tests.train.conftest import tiny_config, write_config
from train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from core.lock import DirectoryLock; "
        "DirectoryLock({dir!r}).acquire(); print('held', flush=True); time.sleep(120)")


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), dir=str(directory))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_directory_names_its_holder_and_a_killed_holder_is_replaced(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(ConfigError) as info:
            DirectoryLock(tmp_path / "run").acquire()
        assert f"is in use by another run: pid {proc.pid} on host {socket.gethostname()}, started " in str(info.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead holder's flock: the lock is taken over, and who held it is known.
    lock = DirectoryLock(tmp_path / "run").acquire()
    try:
        assert lock.took_over["pid"] == proc.pid
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released: emptied, not deleted


def _write_holder(directory: Path, **fields) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    path.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": time.time(), **fields}))
    return path


def test_a_record_of_a_dead_process_on_this_host_is_stale(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    _write_holder(tmp_path / "run", pid=int(dead), start_ticks=1)  # no flock held: what a crash on NFS leaves
    lock = DirectoryLock(tmp_path / "run").acquire()
    lock.release()
    assert lock.took_over["pid"] == int(dead)


def test_another_hosts_lock_counts_while_its_heartbeat_is_fresh(tmp_path):
    path = _write_holder(tmp_path / "run", host="node-7", pid=4242)
    with pytest.raises(ConfigError, match=r"pid 4242 on host node-7, started .*heartbeat is younger than"):
        DirectoryLock(tmp_path / "run").acquire()
    old = time.time() - STALE_AFTER - 60
    os.utime(path, (old, old))
    lock = DirectoryLock(tmp_path / "run").acquire()
    lock.release()
    assert lock.took_over["host"] == "node-7"


@pytest.mark.slow
def test_two_trainers_racing_on_one_out_dir(tmp_path, tiny_data):
    """Started a second apart with different seeds: one trains, the other exits 2 naming it; nothing is lost."""
    run = tmp_path / "run"
    procs = []
    for seed in (1, 2):
        cfg = write_config(tmp_path / f"cfg{seed}.yaml",
                           tiny_config(run, tiny_data, "train.max_steps=40", "train.save_interval=10",
                                       "train.sample_tokens=0", f"train.seed={seed}"))
        procs.append(subprocess.Popen([sys.executable, "run_train.py", "--config", str(cfg)], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1.0)
    results = [(p.wait(timeout=600), p.stderr.read(), p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err, _ in results]
    winner = next(p for code, _, p in results if code == 0)
    loser_err = next(err for code, err, _ in results if code == 2)
    assert loser_err.count("error:") == 1 and "Traceback" not in loser_err
    assert f"is in use by another run: pid {winner.pid} on host {socket.gethostname()}" in loser_err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in line and "val_loss" not in line]
    assert steps == list(range(1, 41))  # one run's records, each step once
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-1] == "step_0000040"
    load_model(run)


def test_read_only_out_dir_is_one_clear_error(tmp_path, tiny_data):
    """As root a chmod does not stop writes, so the directory is a read-only tmpfs there; else chmod."""
    run = tmp_path / "ro"
    run.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(run)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
    else:
        run.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=rf"train\.out_dir {run} cannot be written: (Read-only file system|"
                                              r"Permission denied)"):
            train(tiny_config(run, tiny_data, "train.max_steps=3"))
        assert list(run.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(run)], check=False)
        else:
            run.chmod(0o700)
