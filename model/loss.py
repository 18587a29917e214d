"""Next-token cross-entropy from the final hidden states, in chunks of rows, so that the full fp32 logits
(tokens x vocab: 32768 x 128256 x 4 bytes = 16 GiB for one micro batch of configs/1b.yaml) never exist at once.

Each chunk's logits are made by the head, reduced to the chunk's summed loss and freed; backward recomputes
them one chunk at a time (per-chunk activation checkpointing, which also replays the autocast state). The cost
is one extra head matmul per chunk, so a batch that fits in one chunk takes the plain, unchunked path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Logits per chunk (rows = this / vocab): 2^26 fp32 logits are 256 MiB (plus their bf16 matmul output and, in
# backward, their gradient). Large enough that the head matmul of a chunk stays efficient (523 rows of a 128k
# vocabulary, 16384 of a 4k one, so small vocabularies run unchunked), small enough to be noise next to the
# activations.
LOGITS_PER_CHUNK = 2**26
IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this value add nothing to the loss or the mean


def _summed_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of logits = hidden @ weight.T, taken in fp32 whatever the matmul's dtype."""
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of the logits hidden @ weight.T against `targets`, `chunk_size` rows at a time.

    hidden (..., dim), weight (vocab, dim) (the output head, tied or not), targets (...) of the same leading
    shape. reduction: "mean" or "sum" over all tokens. chunk_size: rows per chunk; None: LOGITS_PER_CHUNK / vocab.
    Equal to F.cross_entropy(F.linear(hidden, weight).float(), targets) (IGNORE_INDEX included) up to the order
    of the sums, in forward and backward.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, dim)
    t = targets.reshape(-1)  # (N,)
    if chunk_size is None:
        chunk_size = math.ceil(LOGITS_PER_CHUNK / weight.shape[0])
    if h.shape[0] <= chunk_size:
        total = _summed_loss(h, weight, t)
    else:
        recompute = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        total = sum(
            checkpoint(_summed_loss, hc, weight, tc, use_reentrant=False) if recompute else _summed_loss(hc, weight, tc)
            for hc, tc in zip(h.split(chunk_size), t.split(chunk_size), strict=True)
        )
    if reduction == "sum":
        return total
    return total / (t != IGNORE_INDEX).sum()  # F.cross_entropy's mean: over the targets not ignored
