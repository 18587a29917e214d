"""Fixtures for multi-process tests: the tiny dataset and configs of tests/train, and a torchrun launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.train.conftest import TinyData, tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)

ROOT = Path(__file__).resolve().parents[2]


def torchrun(config: Path, *overrides: str, nproc: int = 2, timeout: float = 150) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N run_train.py --config CONFIG OVERRIDES...` (gloo on CPU).

    The launcher and its workers run in their own process group, killed as a whole on timeout.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "run_train.py"), "--config", str(config), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def losses(out_dir: Path) -> dict[int, float]:
    """Training loss per step from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and not r.get("skipped")}
