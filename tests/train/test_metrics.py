"""Metrics sinks (jsonl, TensorBoard, wandb offline) and the MFU peak table."""

import json
import logging

import pytest
import torch

from train import metrics
from train.config import Config
from train.metrics import MetricsLogger, peak_tflops, resolve_peak_flops


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("Tesla T4", None),
    ],
)
def test_peak_table(name, tflops):
    assert peak_tflops(name) == tflops


def test_peak_override_and_cpu():
    cfg = Config()
    assert resolve_peak_flops(cfg, torch.device("cpu")) is None
    cfg.log.peak_tflops = 100.0
    assert resolve_peak_flops(cfg, torch.device("cpu")) == 100e12


def test_unknown_gpu_means_no_mfu_and_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(metrics.torch.cuda, "get_device_name", lambda device=None: "Mystery Accelerator 9000")
    with caplog.at_level(logging.WARNING, logger="mini_llm"):
        assert resolve_peak_flops(Config(), torch.device("cuda", 0)) is None
    assert len(caplog.records) == 1 and "Mystery Accelerator 9000" in caplog.records[0].getMessage()


def test_jsonl_tensorboard_and_resume_truncation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = Config()
    out = tmp_path / "run"
    out.mkdir()
    logger = MetricsLogger(cfg, out, resume_step=0, enabled=True)
    for step in (1, 2, 3):
        logger.log({"step": step, "loss": 1.0 / step, "lr": 1e-3})
    logger.close()
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    # Resuming from step 2 drops what a crashed run logged after it.
    logger = MetricsLogger(cfg, out, resume_step=2, enabled=True)
    logger.log({"step": 3, "loss": 0.25})
    logger.close()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(Config(), tmp_path, resume_step=0, enabled=False)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = Config()
    cfg.log.wandb, cfg.log.tensorboard = True, False
    logger = MetricsLogger(cfg, tmp_path, resume_step=0, enabled=True)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
