"""Tiny model configs and a seeded model factory shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from model import ModelConfig, Transformer


def _tiny_config(**overrides) -> ModelConfig:
    # dim 64, 4 query heads of 16, 2 layers, a prime vocabulary: milliseconds per forward on a CPU.
    fields = dict(dim=64, n_layers=2, n_heads=4, vocab_size=101, multiple_of=16, max_seq_len=32)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """A tiny ModelConfig; keyword arguments override its fields."""
    return _tiny_config


@pytest.fixture
def make_model() -> Callable[..., Transformer]:
    """Build a seeded tiny Transformer in eval mode; keyword arguments override the tiny config."""

    def make(seed: int = 0, **overrides) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(_tiny_config(**overrides)).eval()

    return make
