"""Metrics sinks (metrics.jsonl, TensorBoard, wandb) and model FLOPs utilization. Rank 0 only."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from core.atomic import write_text_atomic
from train.config import Config

log = logging.getLogger("mini_llm")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets. Checked in order: the
# first pattern whose every word is in the device name wins, so specific names come before general ones.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM (device name "NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),
    (("GH200",), 989.0),
    (("B200",), 2250.0),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10G",), 70.0),
    (("A10",), 125.0),
    (("RTX 4090",), 165.2),  # with fp32 accumulation
    (("RTX 3090",), 71.0),
]


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak for a GPU name, or None if it is not in the table."""
    name = device_name.upper()
    for words, tflops in PEAK_BF16_TFLOPS:
        if all(w in name for w in words):
            return tflops
    return None


def resolve_peak_flops(cfg: Config, device: torch.device) -> float | None:
    """Peak FLOP/s of one device for MFU: the configured value, the table's, or None (one warning on GPUs)."""
    if cfg.log.peak_tflops is not None:
        return cfg.log.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tflops = peak_tflops(name)
    if tflops is None:
        log.warning("unknown GPU %r: MFU is not reported (set log.peak_tflops to enable it)", name)
        return None
    return tflops * 1e12


class MetricsLogger:
    """Writes each record to metrics.jsonl and TensorBoard (and wandb when enabled). A no-op off rank 0."""

    def __init__(self, cfg: Config, out_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        self._truncate_after(resume_step)
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run logged after the checkpoint we resume from.
            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        if cfg.log.wandb:
            import wandb  # honours WANDB_MODE=offline

            self.wandb = wandb.init(
                project=cfg.log.wandb_project,
                name=cfg.log.wandb_run_name or out_dir.name,
                config=cfg.to_dict(),
                dir=str(out_dir),
                resume="allow",
                id=_wandb_id(out_dir),
            )

    def _truncate_after(self, step: int) -> None:
        """Keep only records up to `step`, so a resumed run never logs a step twice. A line that is not a complete
        record (the torn last line of a run killed mid-write, or on a full disk) is dropped with a warning;
        every complete record is kept."""
        if not self.path.exists():
            return
        kept, torn = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            record = _parse(line)
            if record is None:
                torn += bool(line.strip())
            elif record["step"] <= step:
                kept.append(line)
        if torn:
            log.warning("%s: dropped %d incomplete line(s) (a run stopped while writing them)", self.path, torn)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and self.tb is not None:
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _parse(line: str) -> dict | None:
    """A metrics record, or None for a line that is not one (torn, empty or foreign)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _wandb_id(out_dir: Path) -> str:
    """A run id stored in out_dir, so a resumed run continues the same wandb run."""
    path = out_dir / "wandb_id.txt"
    if not path.exists():
        path.write_text(os.urandom(8).hex())
    return path.read_text().strip()
