"""Grouped-query attention: MHA (n_kv_heads == n_heads), GQA, and MQA (n_kv_heads == 1) in one module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.kv_cache import KVCache
from model.rope import apply_rope


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_heads, T, D) -> (B, n_kv_heads * n_rep, T, D); query head h reads kv head h // n_rep.

    The convention of grouped-query attention (Meta's reference), which SDPA's enable_gqa and the head folding
    in Attention.forward follow without making this copy; kept as its executable definition."""
    if n_rep == 1:
        return x
    B, n_kv, T, D = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, D).reshape(B, n_kv * n_rep, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)  # residual output projection
        self.kv_cache: KVCache | None = None  # set by Transformer.setup_cache for generation only

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv_len: int | None = None,
        cache_rows: slice | None = None,
    ) -> torch.Tensor:
        """x: (B, T, dim) at `positions`, (T,) or (B, T) per row. With a KV cache (its rows `cache_rows`,
        default the first B), `mask` says which of the first `kv_len` cached keys each query sees; without one,
        attention is over the T inputs, causal when `mask` is None, else exactly as `mask` (B, 1, T, T) allows
        (causal and padding combined by the caller)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        n_rep = self.n_heads // self.n_kv_heads
        dropout_p = self.dropout if self.training else 0.0
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(positions, k, v, cache_rows)  # (B, n_kv_heads, max_len, head_dim)
            k, v = k[:, :, :kv_len], v[:, :, :kv_len]
        if mask is None:
            # Training: queries and keys are the same T tokens, so the plain causal mask is exact. SDPA shares
            # each kv head among its n_rep query heads itself (query head h reads kv head h // n_rep, as
            # repeat_kv), without a copy of k and v per query head; on CUDA flash attention supports it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)
            y = y.transpose(1, 2)  # (B, T, n_heads, head_dim)
        else:
            # An explicit mask (never is_causal with a cache: with T queries against kv_len keys the causal
            # corner would be wrong). The n_rep query heads that share kv head g (heads g * n_rep + r) become
            # n_rep * T queries of head g: no copy of the keys and values, and on CUDA the memory-efficient
            # kernel, which takes masks but not enable_gqa (that would fall back to the unfused math kernel).
            q = q.reshape(B, self.n_kv_heads, n_rep * T, self.head_dim)
            if T > 1:  # rows r * T + t read the mask of t; one row (decode) broadcasts
                mask = mask.repeat(n_rep, 1) if mask.dim() == 2 else mask.repeat(1, 1, n_rep, 1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            # (B, n_kv_heads, n_rep * T, head_dim) -> (B, T, n_kv_heads, n_rep, head_dim): head g * n_rep + r.
            # Split and permuted, never viewed whole: SDPA's output strides are the kernel's (CUDA's
            # memory-efficient kernel returns it laid out as (B, n_rep * T, n_kv_heads, head_dim)).
            y = y.unflatten(2, (n_rep, T)).permute(0, 3, 1, 2, 4)
        return self.wo(y.reshape(B, T, self.n_heads * self.head_dim))
