"""Shared benchmark helpers: the environment record, result files, and a plain-text table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def git_commit() -> str:
    """$MINI_LLM_COMMIT when set (a copy of the tree sent to another machine, whose .git, if any, may be stale),
    else the checkout's commit (with -dirty for uncommitted changes), else "unknown"."""
    if os.environ.get("MINI_LLM_COMMIT"):
        return os.environ["MINI_LLM_COMMIT"]
    fallback = "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            return fallback
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return fallback


def environment(device: str | None = None) -> dict:
    """What a number depends on: versions, CPU/GPU, threads, commit."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if device is not None:
        env["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write JSON to `out`, or benchmarks/results/<name>-<device>.json."""
    path = Path(out) if out else ROOT / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned text table."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
