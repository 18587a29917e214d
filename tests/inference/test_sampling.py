"""Sampling: every filter keeps exactly its set, draws follow the distribution, seeds reproduce, bad values fail."""

from __future__ import annotations

import pytest
import torch

from inference.errors import GenerationError
from inference.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    min_p_filter,
    sample_from_logits,
    top_k_filter,
    top_p_filter,
)

V = 50


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(rows, V, generator=torch.Generator().manual_seed(seed))


def draw(params: SamplingParams, logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One token per row of `logits`."""
    return Sampler(params, [[]] * logits.shape[0], V, "cpu", seed)(logits)


def nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """Reference top-p set: most likely tokens in order until their mass reaches p."""
    kept, mass = set(), 0.0
    for i in torch.argsort(probs, descending=True).tolist():
        kept.add(i)
        mass += probs[i].item()
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_samples_only_the_k_most_likely(k: int) -> None:
    logits = random_logits(1).expand(4000, V)
    allowed = set(torch.topk(logits[0], k).indices.tolist())
    seen = set(draw(SamplingParams(temperature=1.5, top_k=k), logits).tolist())
    assert seen <= allowed
    assert seen == allowed  # and the filter does not drop any of them (4000 draws)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_top_p_samples_only_the_nucleus(p: float) -> None:
    logits = random_logits(1, seed=1)
    allowed = nucleus(torch.softmax(logits[0], -1), p)
    seen = set(draw(SamplingParams(temperature=1.0, top_p=p), logits.expand(4000, V)).tolist())
    assert seen <= allowed
    assert len(allowed) == 1 or len(seen) > 1


def test_top_p_keeps_the_reference_set_on_many_rows() -> None:
    logits = random_logits(64, seed=2)
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    for row in range(64):
        assert set(kept[row].nonzero().flatten().tolist()) == nucleus(torch.softmax(logits[row], -1), 0.7)


def test_min_p_keeps_tokens_above_the_scaled_maximum() -> None:
    logits = random_logits(16, seed=3)
    probs = torch.softmax(logits, -1)
    kept = torch.isfinite(min_p_filter(logits, 0.1))
    assert torch.equal(kept, probs >= 0.1 * probs.max(-1, keepdim=True).values)


def test_top_k_keeps_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 1)).tolist() == [[False, True, True, False]]


def test_draws_follow_the_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(40000, 4)
    tokens = Sampler(SamplingParams(temperature=1.0), [[]] * 40000, 4, "cpu", seed=5)(logits)
    freq = torch.bincount(tokens, minlength=4).float() / 40000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01)


@pytest.mark.parametrize("u", [0.0, 1 - 2**-24, 0.5])
def test_extreme_uniform_draws_never_pick_a_dropped_token(monkeypatch, u: float) -> None:
    """The inverse-transform draw at u = 0, the largest u below 1 and in between: tokens of probability zero at
    either end and in the middle are never chosen (their cumulative sum equals their neighbour's)."""
    logits = torch.tensor([[float("-inf"), -50.0, 2.0, float("-inf"), 1.0, -60.0, float("-inf")]])
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u, device=kw.get("device")))
    token = sample_from_logits(logits, torch.Generator()).item()
    assert torch.isfinite(logits[0, token])
    assert token == (2 if u > 0 else 4)  # u -> 1 takes the first token of real mass, u = 0 the last one


def test_many_draws_never_pick_a_dropped_token() -> None:
    logits = random_logits(1, seed=11).expand(20000, V).clone()
    logits[:, [0, 7, V - 1]] = float("-inf")
    tokens = Sampler(SamplingParams(temperature=1.0), [[]] * 20000, V, "cpu", seed=3)(logits)
    assert not set(tokens.tolist()) & {0, 7, V - 1}


def test_temperature_zero_is_argmax_and_low_temperature_approaches_it() -> None:
    logits = random_logits(32, seed=4)
    assert torch.equal(draw(SamplingParams(temperature=0.0), logits), logits.argmax(-1))
    assert torch.equal(draw(SamplingParams(temperature=1e-3), logits), logits.argmax(-1))


def test_same_seed_same_tokens_and_other_seed_other_tokens() -> None:
    logits = random_logits(200, seed=6)
    params = SamplingParams(temperature=1.0, top_k=20)
    assert torch.equal(draw(params, logits, seed=7), draw(params, logits, seed=7))
    assert not torch.equal(draw(params, logits, seed=7), draw(params, logits, seed=8))


def test_sampling_ignores_the_global_rng() -> None:
    logits = random_logits(100, seed=9)
    torch.manual_seed(0)
    a = draw(SamplingParams(), logits, seed=3)
    torch.manual_seed(1)
    assert torch.equal(a, draw(SamplingParams(), logits, seed=3))


def test_repetition_penalty_formula() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_repetition_penalty_steers_greedy_away_from_seen_tokens() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0]])
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), [[0]], 3, "cpu")
    assert sampler(logits).tolist() == [1]  # 5 / 2 < 4
    assert sampler(logits).tolist() == [0]  # now 1 is seen too: 5 / 2 > 4 / 2
    assert Sampler(SamplingParams(temperature=0.0), [[0]], 3, "cpu")(logits).tolist() == [0]


def test_allowed_vocab_is_never_exceeded() -> None:
    logits = torch.zeros(500, V)
    logits[:, -5:] = 10.0  # the best ids are outside the tokenizer
    tokens = Sampler(SamplingParams(temperature=2.0), [[]] * 500, V, "cpu", allowed_vocab=V - 5)(logits)
    assert tokens.max().item() < V - 5


@pytest.mark.parametrize(
    "params, needle",
    [
        (SamplingParams(temperature=-0.1), "temperature"),
        (SamplingParams(temperature=float("nan")), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(min_p=1.5), "min_p"),
        (SamplingParams(repetition_penalty=0.0), "repetition_penalty"),
    ],
)
def test_invalid_values_are_generation_errors(params: SamplingParams, needle: str) -> None:
    with pytest.raises(GenerationError, match=needle):
        params.validate()
