"""Learning-rate schedules at known steps, and which parameters get weight decay."""

import itertools
import math

import pytest

from model import ModelConfig, Transformer
from train.config import OptimConfig
from train.optim import lr_at, param_groups


def test_warmup_is_linear_and_reaches_peak():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(4, cfg, 100) == pytest.approx(5e-4)
    assert lr_at(9, cfg, 100) == pytest.approx(1e-3)


def test_cosine_decays_from_peak_to_min_lr():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)
    # Halfway through the decay (steps 10..109) the cosine is at the mean of lr and min_lr.
    assert lr_at(10 + 99 / 2, cfg, 110) == pytest.approx(5.5e-4)
    assert lr_at(109, cfg, 110) == pytest.approx(1e-4)
    values = [lr_at(s, cfg, 110) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_wsd_is_flat_then_decays_linearly():
    cfg = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    # max_steps 100: decay over the last 20 steps (80..99).
    assert lr_at(10, cfg, 100) == pytest.approx(1e-3)
    assert lr_at(79, cfg, 100) == pytest.approx(1e-3)
    assert lr_at(80, cfg, 100) == pytest.approx(1e-3 * 19 / 20)
    assert lr_at(89, cfg, 100) == pytest.approx(1e-3 * 10 / 20)
    assert lr_at(99, cfg, 100) == pytest.approx(0.0)


def test_constant_schedule():
    cfg = OptimConfig(lr=2e-3, warmup_steps=0, schedule="constant")
    assert {lr_at(s, cfg, 50) for s in range(50)} == {2e-3}


def test_cosine_without_warmup_starts_at_peak():
    cfg = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, cfg, 11) == pytest.approx(1e-3)
    assert lr_at(10, cfg, 11) == pytest.approx(0.0)
    assert not math.isnan(lr_at(0, cfg, 1))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_on_matrices_only(tied, decay_embeddings):
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16,
                                    max_seq_len=16, tie_embeddings=tied))
    decay, no_decay = param_groups(model, OptimConfig(weight_decay=0.1, decay_embeddings=decay_embeddings))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert all("norm" in n for n in not_decayed - {"tok_embeddings.weight"})
    assert ("tok_embeddings.weight" in decayed) == decay_embeddings
    assert ("output.weight" in decayed) == (not tied)  # a tied head is the embedding
    assert all(p.ndim == 2 for p in decay["params"])
    # Every parameter is in exactly one group.
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))
