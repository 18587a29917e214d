"""Preallocated key/value cache for one attention layer, created for generation and absent in training."""

import torch
from torch import nn


class KVCache(nn.Module):
    """Static (B, n_kv_heads, max_len, head_dim) buffers written in place at the tokens' positions.

    Shapes never change after setup, so a compiled decode step can be captured once (CUDA graphs). A forward
    may use a contiguous block of rows (`rows`, a slice); a server keeps one request per row (a slot).
    """

    def __init__(
        self, batch_size: int, max_len: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device=None
    ):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(
        self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (B, n_kv_heads, T, head_dim) into cache rows `rows` (default the first B) at
        `positions`: (T,) shared by the rows, or (B, T) per row. Return those rows' whole cache."""
        rows = slice(0, k.shape[0]) if rows is None else rows
        cache_k, cache_v = self.k[rows], self.v[rows]  # views: the writes below land in the buffers
        if positions.dim() == 1:
            cache_k.index_copy_(2, positions, k.to(self.k.dtype))
            cache_v.index_copy_(2, positions, v.to(self.v.dtype))
        else:
            index = positions[:, None, :, None].expand_as(k)  # (B, n_kv_heads, T, head_dim)
            cache_k.scatter_(2, index, k.to(self.k.dtype))
            cache_v.scatter_(2, index, v.to(self.v.dtype))
        return cache_k, cache_v

    def move_row(self, src: int, dst: int) -> None:
        """Copy row src over row dst (a server compacting its slots when a request leaves)."""
        self.k[dst].copy_(self.k[src])
        self.v[dst].copy_(self.v[src])
