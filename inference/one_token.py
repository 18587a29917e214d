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

decode_layout() goes one step further for a model that is only decoded (Generator.from_checkpoint on CPU): it
stores q, k and v's weights side by side in one transposed buffer, w1 and w3's in another, and the head
transposed, all as views (same values, shapes and parameter names; no extra memory). The step then runs one
matmul for q, k and v and one for both up projections, over the layout a batch-1 mat-vec reads fastest.

The arithmetic is the model's (RMSNorm in fp32 as model/norm.py, RoPE as model.rope.apply_rope's complex
product), up to the order of float sums, so greedy tokens do not change: tests/inference/test_one_token.py
compares logits (to 1e-5) and greedy tokens with the full forward, with and without decode_layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model import Transformer
from model.norm import RMSNorm


@dataclass(frozen=True)
class _Layer:
    """One block's weights as the step reads them: norms and transposed projections (views, no copies)."""

    attention: nn.Module  # for its kv_cache, which setup_cache replaces between generations
    attention_norm: _Norm
    ffn_norm: _Norm
    wqkv: torch.Tensor | None  # (dim, (n_heads + 2 n_kv_heads) head_dim) when decode_layout placed them so
    wq: torch.Tensor  # (dim, n_heads * head_dim): weight.t()
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    w13: torch.Tensor | None  # (dim, 2 hidden): w1 then w3, when decode_layout placed them so
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
        self._norm: _Norm | None = None  # the final norm
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
        self._layers = []
        for layer in model.layers:
            attn, ffn = layer.attention, layer.feed_forward
            qkv = [attn.wq.weight.t(), attn.wk.weight.t(), attn.wv.weight.t()]
            up = [ffn.w1.weight.t(), ffn.w3.weight.t()]
            dim = model.cfg.dim
            self._layers.append(_Layer(attn, _Norm(layer.attention_norm, dim), _Norm(layer.ffn_norm, dim),
                                       side_by_side(qkv), *qkv, attn.wo.weight.t(), side_by_side(up), *up,
                                       ffn.w2.weight.t()))
        self._norm = _Norm(model.norm, model.cfg.dim)
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
            h = layer.attention_norm(x)
            if layer.wqkv is not None:  # one matmul; q and k rotated together
                qkv = torch.mm(h, layer.wqkv)
                qk = rotate(qkv[:, : (H + Hkv) * D].unflatten(-1, (H + Hkv, D)), angle)
                q, k = qk[:, :H].unflatten(1, (Hkv, H // Hkv)), qk[:, H:]
                v = qkv[:, (H + Hkv) * D :].unflatten(-1, (Hkv, D))
            else:
                q = rotate(torch.mm(h, layer.wq).view(B, Hkv, H // Hkv, D), angle)
                k = rotate(torch.mm(h, layer.wk).view(B, Hkv, D), angle)
                v = torch.mm(h, layer.wv).view(B, Hkv, D)
            # q (B, n_kv_heads, n_rep, head_dim): the n_rep query heads that share kv head g (heads g * n_rep + r,
            # as repeat_kv) are n_rep queries of that head, so keys and values are not copied per query head.
            cache = layer.attention.kv_cache
            keys, values = (cache.k, cache.v) if cache.k.shape[0] == B else (cache.k[:B], cache.v[:B])
            keys.select(2, pos).copy_(k)
            values.select(2, pos).copy_(v)
            y = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1], attn_mask=mask)
            x = residual(x, y.reshape(B, H * D), layer.wo)  # SDPA may return it in any layout (CUDA does)
            h = layer.ffn_norm(x)
            if layer.w13 is not None:
                gate, up = torch.mm(h, layer.w13).chunk(2, dim=-1)
            else:
                gate, up = torch.mm(h, layer.w1), torch.mm(h, layer.w3)
            x = residual(x, F.silu(gate) * up, layer.w2)  # model/mlp.py's SwiGLU
        return torch.mm(self._norm(x), self._head)  # (B, V)


def side_by_side(columns: list[torch.Tensor]) -> torch.Tensor | None:
    """The one (rows, sum of widths) matrix these column blocks are, when they lie next to each other in one
    buffer (as decode_layout puts them); else None."""
    first = columns[0]
    rows, stride = first.shape[0], first.stride()
    offset, width = first.storage_offset(), 0
    for block in columns:
        if (block.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or block.stride() != stride
                or block.shape[0] != rows or block.storage_offset() != offset + width):
            return None
        width += block.shape[1]
    if stride != (width, 1):
        return None
    return first.as_strided((rows, width), stride, offset)


def _place_side_by_side(linears: list[nn.Linear]) -> None:
    """Copy the linears' transposed weights into one (in, sum of outs) buffer and make each weight a view of
    its block: weight.t() is then a column block of that buffer."""
    buffer = torch.cat([linear.weight.detach().t() for linear in linears], dim=1).contiguous()
    start = 0
    for linear in linears:
        end = start + linear.out_features
        linear.weight.data = buffer[:, start:end].t()
        start = end


def decode_layout(model: Transformer) -> None:
    """Lay the weights out for the one-token step, values, shapes and parameter names unchanged: each layer's
    wq, wk and wv side by side in one transposed buffer, w1 and w3 in another, and the head transposed (when it
    has more outputs than inputs; a tied embedding is the same Parameter). A batch-1 mat-vec on CPU reads the
    transposed layout 1.7-2.6x faster (ours: a 4096x256 head 32 vs 13 GB/s, a 704x256 up projection 18 vs
    10 GB/s) and one matmul replaces three, and two. Saving makes every tensor contiguous again, in its own
    layout. For a model owned by inference (Generator.from_checkpoint on CPU), not one being trained."""
    with torch.no_grad():
        for layer in model.layers:
            _place_side_by_side([layer.attention.wq, layer.attention.wk, layer.attention.wv])
            _place_side_by_side([layer.feed_forward.w1, layer.feed_forward.w3])
        head = model.output
        if head.out_features > head.in_features:
            head.weight.data = head.weight.data.t().contiguous().t()


class _Norm:
    """RMSNorm of (B, dim) rows in few ops: in fp32 the mean square as one mat-vec, torch.addmv(eps, x * x,
    1 / dim), about half the time of torch's rms_norm for one row on CPU (8-12 vs 18-26 us; a (1, 256)
    reduction alone costs ~10 us); it sums in another order, so results equal model/norm.py's to ~1e-7
    relative, not bitwise. Other dtypes take the module's own operations, in its order."""

    def __init__(self, norm: RMSNorm, dim: int) -> None:
        self.weight, self.eps = norm.weight, norm.eps
        self.fast = norm.weight.dtype == torch.float32
        if self.fast:
            self.inv_dim = torch.full((dim,), 1.0 / dim, device=norm.weight.device)
            self.eps_t = torch.tensor([norm.eps], device=norm.weight.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and x.dtype == torch.float32:
            scale = torch.addmv(self.eps_t, x * x, self.inv_dim).rsqrt_().unsqueeze_(1)  # (B, 1)
            return (x * scale).mul_(self.weight)
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


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
