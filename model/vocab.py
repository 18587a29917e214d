"""Grow a model's vocabulary, e.g. after chat markers were appended to its tokenizer (Tokenizer/extend.py).

New rows of the embedding and of an untied output head are the mean of the existing rows. For the output head
that keeps the model's predictions almost unchanged: a new token's logit is the mean of the old logits, so it
gets about an average token's (tiny) probability instead of a random one that could dominate; for the embedding
it puts the new token's input in the region the model has seen, rather than at a random point. Fine-tuning then
teaches the rows their meaning. Existing rows are left exactly as they were.
"""

from __future__ import annotations

import torch
from torch import nn

from model.transformer import Transformer


def _grown(weight: torch.Tensor, new_size: int) -> torch.Tensor:
    """`weight` (old_size, dim) followed by new_size - old_size copies of its mean row, computed in fp32."""
    mean = weight.detach().float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight.detach(), mean.expand(new_size - weight.shape[0], -1)], dim=0)


@torch.no_grad()
def resize_vocab(model: Transformer, new_size: int) -> None:
    """Grow the token embedding and the output head (one shared matrix when tied) to `new_size` rows in place;
    new rows are the mean of the old ones, and model.cfg.vocab_size becomes new_size."""
    old_size = model.cfg.vocab_size
    if new_size < old_size:
        raise ValueError(f"resize_vocab only grows the vocabulary: {new_size} < current {old_size}")
    if new_size == old_size:
        return
    weight = model.tok_embeddings.weight
    embedding = nn.Embedding(new_size, model.cfg.dim, device=weight.device, dtype=weight.dtype)
    embedding.weight.copy_(_grown(weight, new_size))
    model.tok_embeddings = embedding
    if model.cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight  # one matrix, grown once
    else:
        head = model.output.weight
        output = nn.Linear(model.cfg.dim, new_size, bias=False, device=head.device, dtype=head.dtype)
        output.weight.copy_(_grown(head, new_size))
        model.output = output
    model.cfg.vocab_size = new_size


@torch.no_grad()
def set_rows_to_mean(model: Transformer, start: int, stop: int) -> None:
    """Set rows start..stop-1 of the embedding and of an untied head to the mean of rows 0..start-1: for new
    tokens that fall in rows a padded vocabulary already has (never trained as targets)."""
    if not 0 < start <= stop <= model.cfg.vocab_size:
        raise ValueError(f"rows {start}..{stop} must lie within 1..{model.cfg.vocab_size}")
    matrices = [model.tok_embeddings.weight]
    if not model.cfg.tie_embeddings:
        matrices.append(model.output.weight)
    for weight in matrices:
        weight[start:stop] = weight[:start].float().mean(dim=0).to(weight.dtype)
