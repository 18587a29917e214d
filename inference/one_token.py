"""Eager single-token decode: the model's own weights, without the general forward's per-step work.

Transformer.forward serves training, prefill and every decode form, so each decode call builds a positions
tensor, gathers RoPE rows, builds a causal mask over the cache, rotates q and k with a dozen small ops each,
writes the cache with index_copy_ and goes through an nn.Module call per layer, norm and projection. For one
token per row at a Python int position all of that is known in advance: the RoPE angles are one precomputed
complex table, every filled cache slot is visible (no mask, unless prompts were left-padded), the new key and
value go into one slot, activations stay (B, dim) matrices, each projection is one torch.mm against the
transposed weight (views taken once per generation), and each residual add is folded into its projection
(torch.addmm). On CPU, batch-1 decode of a small model spends more time in those per-op costs than in reading
the weights, so this is what makes the eager default fast (benchmarks/decode.py).

The arithmetic is the model's (RMSNorm in fp32 as model/norm.py, RoPE as model.rope.apply_rope's complex
product), so greedy tokens do not change: tests/inference/test_one_token.py compares logits and caches with the
full forward (bitwise equal in fp32 on CPU in our runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import Transformer
from model.norm import RMSNorm


@dataclass(frozen=True)
class _Layer:
    """One block's weights as the step reads them: norms, transposed projections (views, no copies)."""

    attention: torch.nn.Module  # for its kv_cache, which setup_cache replaces between generations
    attention_norm: RMSNorm
    ffn_norm: RMSNorm
    wq: torch.Tensor  # (dim, n_heads * head_dim): weight.t()
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    w1: torch.Tensor
    w3: torch.Tensor
    w2: torch.Tensor


class OneTokenStep:
    """decode_one_token for an int position, eager: logits (B, V) of token (B, 1) at position pos.

    The transposed weight views are taken at the first call for a model and again after reset(), which
    DecodeStep calls at the start of every generation (a moved or reloaded model has new weight tensors)."""

    def __init__(self) -> None:
        self._table: torch.Tensor | None = None  # (max_seq_len, head_dim // 2) complex: cos + i sin
        self._source: torch.Tensor | None = None  # the model.rope.cos the table was built from
        self._model: Transformer | None = None
        self._layers: list[_Layer] = []
        self._head: torch.Tensor | None = None  # output.weight.t()

    def reset(self) -> None:
        """Forget the weight views: the next call takes them again."""
        self._model = None

    def _angles(self, model: Transformer) -> torch.Tensor:
        """The RoPE table as complex numbers, rebuilt only when the model's tables change (device move, reset)."""
        if self._source is not model.rope.cos:
            self._table = torch.complex(model.rope.cos, model.rope.sin)
            self._source = model.rope.cos
        return self._table

    def _prepare(self, model: Transformer) -> None:
        self._layers = [
            _Layer(layer.attention, layer.attention_norm, layer.ffn_norm,
                   layer.attention.wq.weight.t(), layer.attention.wk.weight.t(), layer.attention.wv.weight.t(),
                   layer.attention.wo.weight.t(), layer.feed_forward.w1.weight.t(), layer.feed_forward.w3.weight.t(),
                   layer.feed_forward.w2.weight.t())
            for layer in model.layers
        ]
        self._head = model.output.weight.t()
        self._model = model

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
        if self._model is not model:
            self._prepare(model)
        angle = self._angles(model)[pos]  # (head_dim // 2,) complex, broadcast over batch and heads
        # A padding slot is never attended; the new token's own slot is always real, so no row is all-masked.
        mask = None if key_mask is None else key_mask[:, None, None, : pos + 1]  # (B, 1, 1, pos + 1)
        x = F.embedding(token[:, 0], model.tok_embeddings.weight)  # (B, dim)
        for layer in self._layers:
            h = rms_norm(layer.attention_norm, x)
            q = rotate(torch.mm(h, layer.wq).view(B, Hkv, H // Hkv, D), angle)  # (B, n_kv_heads, n_rep, head_dim)
            k = rotate(torch.mm(h, layer.wk).view(B, Hkv, D), angle)  # (B, n_kv_heads, head_dim)
            cache = layer.attention.kv_cache
            keys, values = (cache.k, cache.v) if cache.k.shape[0] == B else (cache.k[:B], cache.v[:B])
            keys.select(2, pos).copy_(k)
            values.select(2, pos).copy_(torch.mm(h, layer.wv).view(B, Hkv, D))
            # The n_rep query heads that share kv head g (heads g * n_rep + r, as repeat_kv) are n_rep queries of
            # that head: no copy of keys and values per query head.
            y = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1], attn_mask=mask)
            x = residual(x, y.view(B, H * D), layer.wo)
            h = rms_norm(layer.ffn_norm, x)
            x = residual(x, F.silu(torch.mm(h, layer.w1)) * torch.mm(h, layer.w3), layer.w2)  # model/mlp.py's SwiGLU
        return torch.mm(rms_norm(model.norm, x), self._head)  # (B, V)


def transpose_wide_weights(model: torch.nn.Module) -> int:
    """Store every projection with more outputs than inputs transposed in memory: the same (out, in) tensor
    with strides (1, out), so the weight.t() that the one-token step multiplies by is contiguous. For a batch-1
    mat-vec on CPU that layout reads 1.7-2.6x faster (ours: a 4096x256 head 32 vs 13 GB/s, a 704x256 up
    projection 18 vs 10 GB/s); where inputs outnumber outputs it does not help. Values, shapes and the tied
    embedding (the same Parameter) are unchanged, and saving makes tensors contiguous again. For a model owned
    by inference (Generator.from_checkpoint on CPU), not one being trained. Returns how many were moved."""
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features > module.in_features:
                module.weight.data = module.weight.data.t().contiguous().t()
                moved += 1
    return moved


def rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """norm(x) without the module call: in fp32 torch's own rms_norm (one call, the same result as model/norm.py
    in our checks), otherwise the module's operations in its order (normalized in fp32, cast, then weighted)."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    xf = x.float()
    return norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).type_as(x)


def residual(x: torch.Tensor, y: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """x + y @ weight_t: one torch.addmm in fp32 (the same sum as the separate add); in lower precision the add
    stays separate, so the product is rounded before it as in the module forward."""
    if x.dtype == torch.float32:
        return torch.addmm(x, y, weight_t)
    return x + torch.mm(y, weight_t)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """RoPE on adjacent channel pairs (model/rope.py's convention) as one complex product, in fp32:
    (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) + i (x0 sin + x1 cos). Shape (..., head_dim) kept."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * angle).flatten(-2).type_as(x)
