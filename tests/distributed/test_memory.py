"""The start-up memory estimate: parameter-proportional parts follow the byte counts it documents, FSDP divides
them by the world size, activation checkpointing shrinks the activations, and the summary says it is an estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import load_config
from train.memory import estimate_memory

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def llama8b():
    return load_config(CONFIGS / "llama3-8b.yaml", world_size=8)


def test_parameter_state_is_16_bytes_per_parameter_sharded_by_fsdp(llama8b):
    full = estimate_memory(llama8b, 8, "ddp", "bf16")
    sharded = estimate_memory(llama8b, 8, "fsdp", "bf16")
    assert full.params == sharded.params == pytest.approx(8.03e9, rel=1e-3)
    assert full.weights + full.gradients + full.optimizer == 16 * full.params
    assert sharded.weights + sharded.gradients + sharded.optimizer == pytest.approx(16 * full.params / 8, abs=8)
    assert full.working == 4 * full.params  # DDP's gradient buckets
    assert sharded.total < full.total


def test_fsdp_accumulation_keeps_unsharded_gradients(llama8b):
    accumulating = estimate_memory(llama8b, 8, "fsdp", "bf16")  # 512 / (2 x 8) = 32 micro batches per step
    single = estimate_memory(llama8b, 256, "fsdp", "bf16")  # one micro batch per step
    assert accumulating.working - single.working == 4 * accumulating.params


def test_activation_checkpointing_and_precision(llama8b):
    llama8b.train.activation_checkpointing = False
    off = estimate_memory(llama8b, 8, "fsdp", "bf16")
    llama8b.train.activation_checkpointing = True
    on = estimate_memory(llama8b, 8, "fsdp", "bf16")
    assert on.activations < off.activations / 5
    assert estimate_memory(llama8b, 8, "fsdp", "fp32").activations > on.activations
    assert on.total == on.weights + on.gradients + on.optimizer + on.working + on.activations + on.logits


def test_summary_says_estimate(llama8b):
    text = estimate_memory(llama8b, 8, "fsdp", "bf16").summary()
    assert text.startswith("memory estimate per device (rough")
    assert "sharded over 8" in text and "activation checkpointing on" in text and "GiB" in text
    assert text.count("\n") == 1
