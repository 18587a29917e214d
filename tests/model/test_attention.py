"""Grouped-query attention against a naive reference: explicit softmax, kv heads repeated by hand."""

import math

import pytest
import torch

from model.attention import Attention, repeat_kv
from model.rope import RotaryEmbedding
from tests.helpers import sdpa_with_transposed_output


def _rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, T, H, head_dim): adjacent channel pairs as complex numbers times e^(i pos theta^(-2i/head_dim))."""
    head_dim = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(positions.double(), inv_freq)  # (T, head_dim/2)
    rot = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)[None, :, None, :]
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot).flatten(-2)


def _naive_attention(attn: Attention, x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    B, T, _ = x.shape
    H, H_kv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = (x @ attn.wq.weight.T).view(B, T, H, D)
    k = (x @ attn.wk.weight.T).view(B, T, H_kv, D)
    v = (x @ attn.wv.weight.T).view(B, T, H_kv, D)
    q, k = _rope_complex(q, positions, theta), _rope_complex(k, positions, theta)
    # Query head h reads kv head h // (H / H_kv), as in the Meta reference's repeat_kv.
    k = k.repeat_interleave(H // H_kv, dim=2)
    v = v.repeat_interleave(H // H_kv, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    y = torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, H * D)
    return y @ attn.wo.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_matches_naive_reference(make_config, n_kv_heads):
    cfg = make_config(n_kv_heads=n_kv_heads, rope_theta=10000.0)
    torch.manual_seed(0)
    attn = Attention(cfg).eval()
    assert attn.wk.weight.shape == (n_kv_heads * cfg.head_dim, cfg.dim)
    x = torch.randn(2, 11, cfg.dim)
    start = 3  # positions need not start at 0
    positions = torch.arange(11) + start
    rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    cos, sin = rope(positions)
    out = attn(x, cos, sin, positions)
    expected = _naive_attention(attn, x, positions, cfg.rope_theta)
    assert (out - expected).abs().max().item() <= 1e-5


def test_repeat_kv_maps_query_head_to_kv_head_h_div_n_rep():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # (B, n_kv_heads, T, D)
    y = repeat_kv(x, 4)
    assert y.shape == (2, 12, 4, 5)
    for h in range(12):
        assert torch.equal(y[:, h], x[:, h // 4])
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "key-mask"])
def test_attention_takes_sdpa_output_in_any_layout(make_config, monkeypatch, n_kv_heads, masked):
    """The CPU kernels return contiguous outputs, CUDA's do not: the result must not depend on it."""
    cfg = make_config(n_kv_heads=n_kv_heads, rope_theta=10000.0)
    torch.manual_seed(0)
    attn = Attention(cfg).eval()
    x = torch.randn(2, 7, cfg.dim)
    positions = torch.arange(7)
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)(positions)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(2, 1, 7, 7) if masked else None
    expected = attn(x, cos, sin, positions, mask)
    # The mask path regroups the query heads: with a causal mask it must give the causal path's output exactly
    # (a wrong head order would pass the layout check below, since it compares the code with itself).
    torch.testing.assert_close(expected, attn(x, cos, sin, positions), rtol=0, atol=1e-6)
    monkeypatch.setattr("model.attention.F.scaled_dot_product_attention", sdpa_with_transposed_output)
    assert not sdpa_with_transposed_output(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4),
                                            torch.randn(1, 2, 3, 4)).is_contiguous()
    torch.testing.assert_close(attn(x, cos, sin, positions, mask), expected, rtol=0, atol=1e-6)
