"""The training step with the loss really split into chunks (the tiny runs otherwise fit in one): same losses and
weights as the unchunked step, in one process and under FSDP (where the head's weight is the all-gathered one)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import model.loss
from model.checkpoint import find_checkpoint
from train.trainer import train

from .conftest import tiny_config
from .test_trainer import read_metrics

ARGS = ("train.max_steps=3", "train.eval_interval=3", "train.save_interval=3", "train.sample_tokens=0",
        "train.micro_batch_size=4")


def _losses(out_dir) -> dict[tuple[str, int], float]:
    """(kind, step) -> training loss or validation loss."""
    return {(key, r["step"]): r[key] for r in read_metrics(out_dir) for key in ("loss", "val_loss") if key in r}


@pytest.mark.slow
def test_chunked_training_matches_unchunked(tmp_path, tiny_data, monkeypatch):
    train(tiny_config(tmp_path / "whole", tiny_data, *ARGS))
    # 50 rows per chunk: each micro batch of 4 x 32 = 128 targets is split 50 + 50 + 28, in training and evaluation.
    monkeypatch.setattr(model.loss, "LOGITS_PER_CHUNK", 50 * tiny_data.vocab_size)
    train(tiny_config(tmp_path / "chunked", tiny_data, *ARGS))
    train(tiny_config(tmp_path / "fsdp", tiny_data, *ARGS, "train.parallel=fsdp"))
    expected = _losses(tmp_path / "whole")
    assert len(expected) == 4  # 3 training steps and one evaluation
    weights = load_file(str(find_checkpoint(tmp_path / "whole") / "model.safetensors"))
    for run in ("chunked", "fsdp"):
        got = _losses(tmp_path / run)
        assert got.keys() == expected.keys()
        for key, loss in expected.items():
            assert got[key] == pytest.approx(loss, abs=1e-5), (run, key)
        other = load_file(str(find_checkpoint(tmp_path / run) / "model.safetensors"))
        for name, tensor in weights.items():
            torch.testing.assert_close(other[name], tensor, rtol=0, atol=1e-5, msg=name)
