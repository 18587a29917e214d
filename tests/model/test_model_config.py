"""ModelConfig: derived values and validate() errors that name the field."""

import pytest

from model import ModelConfig, Transformer
from model.config import RopeScaling


def test_derived_values():
    cfg = ModelConfig(dim=256, n_heads=8)
    assert cfg.head_dim == 32
    assert cfg.kv_heads == 8  # n_kv_heads None means n_heads
    assert ModelConfig(dim=256, n_heads=8, n_kv_heads=2).kv_heads == 2


def test_explicit_head_dim_sets_the_projection_widths():
    # Llama 3.2 style: heads wider than dim / n_heads (here 4 x 32 = 128 != 64).
    cfg = ModelConfig(dim=64, n_heads=4, n_kv_heads=2, head_dim=32, vocab_size=32)
    cfg.validate()
    attn = Transformer(cfg).layers[0].attention
    assert attn.wq.weight.shape == (4 * 32, 64) and attn.wk.weight.shape == (2 * 32, 64)
    assert attn.wo.weight.shape == (64, 4 * 32)
    assert ModelConfig(dim=64, n_heads=4).head_dim == 16  # absent: derived
    assert cfg.architecture()["head_dim"] == 32


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        (dict(dim=0), ["dim"]),
        (dict(n_layers=0), ["n_layers"]),
        (dict(n_heads=-1), ["n_heads"]),
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(multiple_of=0), ["multiple_of"]),
        (dict(max_seq_len=0), ["max_seq_len"]),
        (dict(n_kv_heads=0), ["n_kv_heads"]),
        (dict(dim=100, n_heads=8), ["dim", "n_heads"]),
        (dict(n_heads=8, n_kv_heads=3), ["n_heads", "n_kv_heads"]),
        (dict(n_heads=8, n_kv_heads=16), ["n_kv_heads"]),
        (dict(dim=24, n_heads=8), ["head_dim"]),  # head_dim 3: RoPE needs pairs
        (dict(ffn_hidden_dim=512, ffn_dim_multiplier=1.3), ["ffn_hidden_dim", "ffn_dim_multiplier"]),
        (dict(ffn_hidden_dim=0), ["ffn_hidden_dim"]),
        (dict(ffn_dim_multiplier=-1.0), ["ffn_dim_multiplier"]),
        (dict(norm_eps=0.0), ["norm_eps"]),
        (dict(rope_theta=0.0), ["rope_theta"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(dropout=-0.1), ["dropout"]),
        (dict(init_std=0.0), ["init_std"]),
        (dict(head_dim=0), ["head_dim"]),
        (dict(head_dim=7), ["head_dim"]),
        (dict(rope_scaling=RopeScaling(type="llama3", factor=0.0)), ["rope_scaling.factor"]),
        (dict(rope_scaling=RopeScaling(type="llama3", low_freq_factor=4.0)),
         ["rope_scaling.high_freq_factor", "rope_scaling.low_freq_factor"]),
        (dict(rope_scaling=RopeScaling(type="llama3", original_max_seq_len=0)), ["rope_scaling.original_max_seq_len"]),
        (dict(rope_scaling=RopeScaling(type="yarn")), ["rope_scaling.type"]),
    ],
)
def test_validate_names_the_field(fields, names):
    cfg = ModelConfig(**fields)
    with pytest.raises(ValueError) as info:
        cfg.validate()
    for name in names:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        Transformer(cfg)  # the model refuses to build from it


def test_default_config_is_valid():
    ModelConfig().validate()
