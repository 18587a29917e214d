"""Preallocated key/value cache for one attention layer, created for generation and absent in training."""

import torch
from torch import nn


class KVCache(nn.Module):
    """Static (B, n_kv_heads, max_len, head_dim) buffers written in place at the tokens' positions.

    Shapes never change after setup, so a compiled decode step can be captured once (CUDA graphs).
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

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v of shape (B, n_kv_heads, T, head_dim) at `positions` (T,); return the whole cache."""
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v
