"""Slot-based use of the KV cache (continuous batching): per-row start positions, a block of cache rows, rows
moved when a request leaves. Every row must match the same sequence run alone through the plain forward."""

import pytest
import torch

TOL = 1e-5  # fp32, max abs difference of logits
KV_HEADS = pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])


def _seq(length: int, seed: int, vocab: int = 101) -> torch.Tensor:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed))


@KV_HEADS
@torch.no_grad()
def test_rows_at_different_positions_decode_like_each_alone(make_model, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    lengths, steps = [3, 9, 6], 5
    seqs = [_seq(n + steps, seed=20 + i) for i, n in enumerate(lengths)]
    references = [model(s[None])[0] for s in seqs]  # (n + steps, V) each, no cache

    model.setup_cache(batch_size=4, max_len=20)  # one spare row: a batch need not fill the cache
    # Right-padded prefill from position 0: padding sits after each row's tokens, so causal attention hides it
    # and the decode steps overwrite it.
    T = max(lengths)
    prompts = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        prompts[i, :n] = seqs[i][:n]
    logits = model(prompts, start_pos=torch.zeros(3, dtype=torch.long))
    for i, n in enumerate(lengths):
        assert (logits[i, :n] - references[i][:n]).abs().max() <= TOL

    pos = torch.tensor(lengths)
    for step in range(steps):
        token = torch.stack([s[n + step] for s, n in zip(seqs, lengths, strict=True)])[:, None]  # (3, 1)
        logits = model(token, start_pos=pos + step)[:, -1]
        for i, n in enumerate(lengths):
            assert (logits[i] - references[i][n + step]).abs().max() <= TOL


@torch.no_grad()
def test_cache_rows_and_move_row_keep_each_sequence_intact(make_model):
    # Row 1 is prefilled alone into its own slot, then row 0 leaves and row 1 moves to slot 0 (compaction).
    model = make_model(n_kv_heads=2)
    a, b = _seq(10, seed=1), _seq(12, seed=2)
    ref_b = model(b[None])[0]
    model.setup_cache(batch_size=3, max_len=16)
    model(a[None, :4], start_pos=0, cache_rows=slice(0, 1))
    model(b[None, :7], start_pos=0, cache_rows=slice(1, 2))
    both = model(torch.stack([a[4:5], b[7:8]]), start_pos=torch.tensor([4, 7]))[:, -1]
    assert (both[1] - ref_b[7]).abs().max() <= TOL

    model.move_cache_row(1, 0)
    for pos in range(8, 12):
        logits = model(b[None, pos : pos + 1], start_pos=torch.tensor([pos]))[0, -1]  # the first row only
        assert (logits - ref_b[pos]).abs().max() <= TOL


@torch.no_grad()
def test_per_row_positions_respect_the_cache_length(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="need a KV cache"):
        model(torch.zeros(2, 1, dtype=torch.long), start_pos=torch.tensor([0, 1]))
    model.setup_cache(batch_size=2, max_len=8)
    model(torch.zeros(2, 1, dtype=torch.long), start_pos=torch.tensor([7, 2]))  # the last slot exactly
    with pytest.raises(ValueError, match="limit of 8"):
        model(torch.zeros(2, 1, dtype=torch.long), start_pos=torch.tensor([8, 2]))
