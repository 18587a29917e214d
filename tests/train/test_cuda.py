"""Training on a CUDA GPU: bf16 autocast, fp16 with the gradient scaler, torch.compile, fused AdamW, MFU.

Skipped without CUDA (CPU CI); run on a GPU machine with `pytest -m cuda`.
"""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import load_model, read_weights
from train.trainer import Trainer, train

from .conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(("precision", "compile"), [("bf16", False), ("bf16", True), ("fp16", False)])
def test_gpu_training_learns_and_saves_clean_weights(tmp_path, tiny_data, precision, compile):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.device=cuda", f"train.precision={precision}",
                      f"train.compile={str(compile).lower()}", "train.max_steps=40", "train.eval_interval=20",
                      "train.save_interval=20", "log.peak_tflops=100")
    trainer = Trainer(cfg)
    assert trainer.engine.optimizer.defaults["fused"]  # fused AdamW by default on CUDA
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and not r.get("skipped")]
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert evals[-1] < evals[0] < 6.0
    assert all(0 < r["mfu"] < 1 for r in records if "mfu" in r) and any("mfu" in r for r in records)
    assert len(losses) >= 35  # fp16 may skip a few steps while the scaler calibrates
    weights = read_weights(tmp_path / "run" / "checkpoints" / "step_0000040")
    assert not [k for k in weights if "_orig_mod" in k] and all(v.dtype == torch.float32 for v in weights.values())
    model, _ = load_model(tmp_path / "run")  # loads on the CPU
    assert all(torch.isfinite(p).all() for p in model.parameters())


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The engine's initial weights for cfg, full and on the CPU (FSDP's gathered from their shards)."""
    from train.engine import build_engine
    from train.parallel import World, close_world, init_world, resolve_plan

    fsdp = cfg.train.parallel == "fsdp"
    world = init_world(cfg.train.device, cfg.train.parallel) if fsdp else World()
    try:
        model = build_engine(cfg, resolve_plan(cfg.train, world)).raw_model
        assert not cfg.model.tie_embeddings or model.output.weight is model.tok_embeddings.weight  # still tied
        state = model.state_dict()
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in state.items()}
    finally:
        if fsdp:
            close_world()


@pytest.mark.parametrize("parallel", ["none", "fsdp"])
def test_a_seed_gives_the_cpu_initial_weights_on_the_gpu(tmp_path, tiny_data, parallel):
    """The init is drawn on the CPU on every path, so a GPU run, plain or FSDP, starts where a CPU run does
    (the CUDA generator draws other numbers than the CPU's for the same seed)."""
    tied = "model.tie_embeddings=true"
    cpu = initial_weights(tiny_config(tmp_path / "cpu", tiny_data, "train.device=cpu", tied))
    gpu = initial_weights(tiny_config(tmp_path / "gpu", tiny_data, "train.device=cuda", tied,
                                      f"train.parallel={parallel}"))
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert torch.equal(cpu[name], gpu[name]), name


def test_resume_is_exact_on_gpu(tmp_path, tiny_data):
    args = ("train.device=cuda", "train.precision=bf16", "train.max_steps=8", "train.save_interval=4",
            "train.eval_interval=4")
    train(tiny_config(tmp_path / "whole", tiny_data, *args))
    train(tiny_config(tmp_path / "split", tiny_data, *args, "train.stop_at_step=4"))
    train(tiny_config(tmp_path / "split", tiny_data, *args))

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, lines)]

    # CUDA kernels can be non-deterministic in their reduction order, so this bound is loose, not equality.
    for (sa, la, va), (sb, lb, vb) in zip(losses("whole"), losses("split"), strict=True):
        assert sa == sb
        assert (la is None) == (lb is None) and (la is None or abs(la - lb) < 1e-2)
        assert (va is None) == (vb is None) and (va is None or abs(va - vb) < 1e-2)
