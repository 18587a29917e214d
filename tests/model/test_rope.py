"""Rotary embeddings: the documented convention, norm preservation, relative positions, buffers."""

import math

import pytest
import torch

from model.config import RopeScaling
from model.rope import RotaryEmbedding, apply_rope, rope_tables, scaled_frequencies


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """apply_rope for x (B, H, T, head_dim) at `positions`, through the module's tables."""
    rope = RotaryEmbedding(x.shape[-1], int(positions.max()) + 1, theta)
    cos, sin = rope(positions)
    return apply_rope(x, cos, sin)


def test_tables_follow_the_meta_convention():
    # Adjacent channels (2i, 2i+1) form one complex number rotated by pos * theta^(-2i/head_dim).
    head_dim, theta = 8, 10000.0
    cos, sin = rope_tables(head_dim, 5, theta)
    assert cos.shape == sin.shape == (5, head_dim // 2)
    assert cos.dtype == sin.dtype == torch.float32
    for pos in range(5):
        for i in range(head_dim // 2):
            angle = pos * theta ** (-2 * i / head_dim)
            assert cos[pos, i].item() == pytest.approx(math.cos(angle), abs=1e-7)
            assert sin[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-7)


def test_apply_rope_equals_complex_multiplication():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16)
    positions = torch.arange(7)
    cos, sin = rope_tables(16, 7, 500000.0)
    inv_freq = 500000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    angles = torch.outer(positions.double(), inv_freq)
    freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)  # (T, head_dim/2) e^(i angle)
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * freqs).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos[positions], sin[positions]), expected)


def test_position_zero_is_identity():
    x = torch.randn(1, 2, 1, 16)
    torch.testing.assert_close(_rotate(x, torch.tensor([0])), x)


def test_rotation_preserves_norms():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 50, 32)
    positions = torch.randint(0, 4000, (50,))
    y = _rotate(x, positions)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_dot_product_depends_only_on_position_difference():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(m: int, n: int) -> float:
        qm = _rotate(q, torch.tensor([m]))
        kn = _rotate(k, torch.tensor([n]))
        return (qm * kn).sum().item()

    for offset in (0, 1, 7, 100):
        reference = score(offset, 0)
        for shift in (1, 13, 900):
            assert score(offset + shift, shift) == pytest.approx(reference, rel=1e-4, abs=1e-4)
    # ... and it does depend on the difference (otherwise the checks above prove nothing).
    assert abs(score(5, 0) - score(6, 0)) > 1e-3


def test_tables_are_non_persistent_buffers(make_model):
    model = make_model()
    buffers = dict(model.named_buffers())
    assert "rope.cos" in buffers and "rope.sin" in buffers
    assert not any(key.startswith("rope.") for key in model.state_dict())


def test_reset_parameters_rebuilds_tables():
    rope = RotaryEmbedding(16, 10, 10000.0)
    cos, sin = rope_tables(16, 10, 10000.0)
    rope.cos.zero_()
    rope.sin.fill_(float("nan"))
    rope.reset_parameters()
    assert torch.equal(rope.cos, cos) and torch.equal(rope.sin, sin)
    assert "cos" in dict(rope.named_buffers()) and not rope.state_dict()


def test_tables_stay_fp32_when_the_model_is_cast():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=4096, theta=10000.0).to(torch.bfloat16)
    cos, sin = rope_tables(16, 4096, 10000.0)
    assert rope.cos.dtype == torch.float32 and torch.equal(rope.cos, cos) and torch.equal(rope.sin, sin)


# ---- llama3 frequency scaling ------------------------------------------------------------------------------------


def _llama3(**fields) -> RopeScaling:
    return RopeScaling(type="llama3", **fields)


def test_llama3_scaling_keeps_high_slows_low_and_blends_between():
    # head_dim 32, theta 5e5: wavelengths 2*pi*5e5^(i/16) = 6.3, 14.1, 32, 72, ... With original_max_seq_len 64,
    # wavelengths < 16 are kept, > 64 divided by 8, and 32 (between) blended.
    head_dim, theta = 32, 500000.0
    scaling = _llama3(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    scaled = scaled_frequencies(inv_freq, scaling)
    wavelen = 2 * math.pi / inv_freq
    high, low = wavelen < 16, wavelen > 64
    assert high.sum() == 2 and low.sum() == 13 and (~high & ~low).sum() == 1
    assert torch.equal(scaled[high], inv_freq[high])
    assert torch.allclose(scaled[low], inv_freq[low] / 8)
    mid = ~high & ~low
    smooth = (64 / wavelen[mid] - 1.0) / (4.0 - 1.0)  # 1 at the high edge, 0 at the low edge
    assert torch.allclose(scaled[mid], (1 - smooth) * inv_freq[mid] / 8 + smooth * inv_freq[mid])
    cos, _ = rope_tables(head_dim, 200, theta, scaling)
    plain, _ = rope_tables(head_dim, 200, theta)
    assert torch.equal(cos[:, :2], plain[:, :2]) and not torch.allclose(cos[:, 2:], plain[:, 2:])


def test_no_scaling_is_plain_rope():
    assert torch.equal(rope_tables(16, 50, 1e4, RopeScaling())[0], rope_tables(16, 50, 1e4)[0])


@pytest.mark.parametrize("head_dim", [16, 64])
def test_llama3_frequencies_match_transformers(head_dim):
    modeling_rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_cfg = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, rope_parameters=params)
    expected, _ = modeling_rope_utils._compute_llama3_parameters(hf_cfg, "cpu")
    ours = scaled_frequencies(
        1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)),
        _llama3(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192),
    )
    assert torch.allclose(ours.float(), expected, rtol=1e-6, atol=0)
