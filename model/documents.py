"""Document masking: several documents packed into one training row, each attending only to itself.

A row's documents are given as `doc_ids` (B, T): equal ids mark one document, and a document is one contiguous run
of positions. Inside a document attention is causal and RoPE positions restart at 0, so each document is computed
exactly as if it were alone in its own row (up to floating-point summation order): no attention crosses a
boundary, and no document sees the position offset at which it was packed.

    doc_ids = doc_ids_from_eos(x, eos_id)          # pretraining: a document ends with its EOS
    logits = model(x, doc_ids=doc_ids)
"""

from __future__ import annotations

import torch


def doc_ids_from_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) document ids of a row of packed documents that each end with `eos_id`: an EOS belongs to the
    document it ends, and the token after it starts the next one."""
    is_eos = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=-1) - is_eos


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token inside its document (0 at each document's first token)."""
    T = doc_ids.shape[-1]
    index = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    first = torch.where(starts, index, torch.zeros_like(index))
    return index - torch.cummax(first, dim=-1).values


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean attention mask: query t sees key s <= t of its own document."""
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal & same)[:, None]
