"""FSDP2's mixed-precision policy in one process: blocks compute with bf16 weights while the sharded master
weights, the optimizer and the checkpoint stay fp32, and the losses track the plain bf16 (autocast) run.

On CPU this runs the same policy over gloo; the CUDA case (nccl, the real target) needs a GPU and is skipped
without one.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from model.checkpoint import find_checkpoint
from train.parallel import close_world, init_world
from train.trainer import Trainer, train

from .conftest import losses, tiny_config

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])])
def test_fsdp_bf16_policy(tmp_path, tiny_data, device):
    args = (f"train.device={device}", "train.precision=bf16", "train.max_steps=4", "train.eval_interval=4",
            "train.save_interval=4", "train.sample_tokens=4", "model.tie_embeddings=true")
    train(tiny_config(tmp_path / "plain", tiny_data, *args))
    cfg = tiny_config(tmp_path / "fsdp", tiny_data, *args, "train.parallel=fsdp")
    world = init_world(cfg.train.device, cfg.train.parallel)
    try:
        assert dist.get_backend() == ("nccl" if device == "cuda" else "gloo")
        trainer = Trainer(cfg, world)
        seen = []
        wq = trainer.engine.raw_model.layers[0].attention.wq
        wq.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
        trainer.fit()
        assert seen and set(seen) == {torch.bfloat16}  # all-gathered in bf16 for compute
        assert {p.dtype for p in trainer.engine.raw_model.parameters()} == {torch.float32}  # sharded fp32 masters
        assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.engine.optimizer.state.values())
    finally:
        close_world()
    weights = load_file(str(find_checkpoint(tmp_path / "fsdp") / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    plain, fsdp = losses(tmp_path / "plain"), losses(tmp_path / "fsdp")
    assert plain.keys() == fsdp.keys() == {1, 2, 3, 4}
    # bf16 residual stream under FSDP vs fp32 under autocast: close, not equal. All steps in one assertion, so a
    # failure shows every step's pair.
    gaps = {step: round(abs(fsdp[step] - plain[step]), 4) for step in plain}
    assert max(gaps.values()) <= 0.05, f"per-step |loss gap| {gaps}: fsdp {fsdp}, plain {plain}"
