"""Eager single-token decode: the model's own modules and weights, without the general forward's per-step work.

Transformer.forward serves training, prefill and every decode form, so each decode call builds a positions
tensor, gathers RoPE rows, builds a causal mask over the cache, rotates q and k with a dozen small ops each and
writes the cache with index_copy_. For one token per row at a Python int position, with cache rows 0..B-1, all
of that is known in advance: the RoPE angles are one precomputed complex table, every filled cache slot is
visible (so no mask, unless prompts were left-padded), and the new key and value are written into one slot.
The projections are applied with torch.nn.functional directly, skipping their nn.Module calls; the norms
are the model's modules. On a 4M-parameter model on CPU that is about 40% fewer kernel launches and far fewer
Python calls per token, which is where batch-1 decode spends its time beside reading the weights. The arithmetic
is the model's (RoPE as a complex product is model.rope.apply_rope's), so greedy tokens do not change:
tests/inference/test_one_token.py compares logits and caches with the full forward (bitwise equal in fp32 on CPU
in our runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import Transformer


class OneTokenStep:
    """decode_one_token for an int position, eager: logits (B, V) of token (B, 1) at position pos."""

    def __init__(self) -> None:
        self._table: torch.Tensor | None = None  # (max_seq_len, head_dim // 2) complex: cos + i sin
        self._source: torch.Tensor | None = None  # the model.rope.cos the table was built from

    def _angles(self, model: Transformer) -> torch.Tensor:
        """The RoPE table as complex numbers, rebuilt only when the model's tables change (device move, reset)."""
        if self._source is not model.rope.cos:
            self._table = torch.complex(model.rope.cos, model.rope.sin)
            self._source = model.rope.cos
        return self._table

    def __call__(
        self, model: Transformer, token: torch.Tensor, pos: int, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Write token's keys and values into cache slot pos of every layer and return next-token logits (B, V).

        key_mask (B, cache_len), False on left-padding slots, as for Transformer.forward."""
        cfg = model.cfg
        B = token.shape[0]
        H, Hkv, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        cache_len = model.cache_len
        if cache_len is None or not 0 <= pos < cache_len:
            raise ValueError(f"position {pos} is outside the KV cache ({cache_len} slots; see setup_cache)")
        angle = self._angles(model)[pos]  # (head_dim // 2,) complex, broadcast over batch and heads
        # A padding slot is never attended; the new token's own slot is always real, so no row is all-masked.
        mask = None if key_mask is None else key_mask[:, None, None, : pos + 1]  # (B, 1, 1, pos + 1)
        x = model.tok_embeddings(token)  # (B, 1, dim)
        for layer in model.layers:
            attn, ffn = layer.attention, layer.feed_forward
            h = layer.attention_norm(x)
            q = rotate(linear(attn.wq, h).view(B, Hkv, H // Hkv, D), angle)  # (B, n_kv_heads, n_rep, head_dim)
            k = rotate(linear(attn.wk, h).view(B, Hkv, D), angle)  # (B, n_kv_heads, head_dim)
            cache = attn.kv_cache
            cache.k[:B, :, pos] = k
            cache.v[:B, :, pos] = linear(attn.wv, h).view(B, Hkv, D)
            # The n_rep query heads that share kv head g (heads g * n_rep + r, as repeat_kv) are n_rep queries of
            # that head: no copy of keys and values per query head.
            y = F.scaled_dot_product_attention(q, cache.k[:B, :, : pos + 1], cache.v[:B, :, : pos + 1], attn_mask=mask)
            x = x + linear(attn.wo, y.view(B, 1, H * D))
            h = layer.ffn_norm(x)
            x = x + linear(ffn.w2, F.silu(linear(ffn.w1, h)) * linear(ffn.w3, h))  # model/mlp.py's SwiGLU
        return linear(model.output, model.norm(x))[:, -1]  # (B, V)


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """module(x) without the module call (hooks and dispatch through nn.Module.__call__ cost as much as the op)."""
    return F.linear(x, module.weight, module.bias)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent channel pairs (model/rope.py's convention) as one complex product, in fp32:
    (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) + i (x0 sin + x1 cos). Shape (..., head_dim) kept."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * angle).flatten(-2).type_as(x)
