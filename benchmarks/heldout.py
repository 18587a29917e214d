"""Held-out bits per byte of a causal language model over one long text, the same way for any tokenization.

The token stream is scored in windows of the model's context length `context` that overlap by half: the first
window scores every position, each later one only the positions past the previous window's end, so every token
after the first is predicted exactly once, with at least context / 2 tokens of context (except near the start).
Bits per byte = (sum of the token losses in nats) / ln 2 / (UTF-8 bytes of the text those tokens spell), which
compares a character-level model with a BPE one on the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_starts(n_inputs: int, context: int) -> list[int]:
    """Starts of the windows of `context` inputs, stride context // 2, the last one ending at n_inputs."""
    if n_inputs <= context:
        return [0]
    stride = max(1, context // 2)
    starts = list(range(0, n_inputs - context + 1, stride))
    if starts[-1] + context < n_inputs:
        starts.append(n_inputs - context)
    return starts


@torch.no_grad()
def heldout_nats(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: list[int], context: int,
                 batch_size: int = 16) -> tuple[float, int]:
    """(summed next-token loss in nats, number of tokens predicted) of ids[1:] given what precedes each one.

    logits_fn maps int64 tokens (B, T) to logits (B, T, vocab)."""
    tokens = torch.tensor(ids, dtype=torch.long)
    n_inputs = len(ids) - 1  # position p reads ids[p] and predicts ids[p + 1]
    length = min(context, n_inputs)
    starts = window_starts(n_inputs, context)
    total, count, scored_to = 0.0, 0, 0
    for b in range(0, len(starts), batch_size):
        group = starts[b : b + batch_size]
        x = torch.stack([tokens[s : s + length] for s in group])
        y = torch.stack([tokens[s + 1 : s + 1 + length] for s in group])
        losses = F.cross_entropy(logits_fn(x).float().flatten(0, 1), y.flatten(), reduction="none").view(len(group), -1)
        for row, s in enumerate(group):
            first = scored_to - s  # positions before this are scored by an earlier window
            total += float(losses[row, first:].double().sum())
            count += length - first
            scored_to = s + length
    assert count == n_inputs, (count, n_inputs)
    return total, count


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """nats / ln 2 / bytes."""
    return nats / math.log(2) / n_bytes
