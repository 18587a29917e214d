"""SwiGLU: hidden width derivation and the forward formula."""

import pytest
import torch

from model import ModelConfig
from model.mlp import FeedForward


def test_llama3_8b_hidden_dim_is_14336():
    cfg = ModelConfig(dim=4096, n_heads=32, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3)
    assert cfg.hidden_dim == 14336


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [
        (256, 64, None, 704),  # int(2 * 1024 / 3) = 682 -> next multiple of 64
        (256, 256, None, 768),  # 682 -> 768
        (768, 256, None, 2048),  # 2048 is already a multiple
        (2048, 256, 1.5, 8192),  # Llama-3.2-1B: int(1.5 * 5461) = 8191 -> 8192
        (64, 1, None, 170),  # multiple_of 1: no rounding
    ],
)
def test_hidden_dim_is_rounded_up_to_multiple_of(dim, multiple_of, multiplier, expected):
    cfg = ModelConfig(dim=dim, n_heads=4, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
    assert cfg.hidden_dim == expected
    assert cfg.hidden_dim % multiple_of == 0


def test_ffn_hidden_dim_overrides_the_derivation():
    cfg = ModelConfig(dim=256, multiple_of=256, ffn_hidden_dim=100)
    assert cfg.hidden_dim == 100  # not rounded to multiple_of either
    ffn = FeedForward(cfg)
    assert ffn.w1.weight.shape == ffn.w3.weight.shape == (100, 256)
    assert ffn.w2.weight.shape == (256, 100)


def test_feed_forward_matches_formula(make_config):
    cfg = make_config()
    torch.manual_seed(0)
    ffn = FeedForward(cfg)
    x = torch.randn(2, 5, cfg.dim)
    gate = x @ ffn.w1.weight.T
    expected = (gate * torch.sigmoid(gate) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)
