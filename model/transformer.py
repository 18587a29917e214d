"""The Llama-style decoder: token embedding, pre-norm blocks (attention + SwiGLU), final norm, LM head."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.attention import Attention
from model.config import ModelConfig
from model.documents import document_mask, document_positions
from model.kv_cache import KVCache
from model.mlp import FeedForward
from model.norm import RMSNorm
from model.rope import RotaryEmbedding


class Block(nn.Module):
    """Pre-norm residual block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, positions, mask=None, kv_len=None, cache_rows=None) -> torch.Tensor:
        h = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, positions, mask, kv_len, cache_rows))
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every weight; call again after `to_empty()` when the model was built on the meta device.

        Linear and embedding weights ~ N(0, init_std). The two projections that write into the residual
        stream (attention.wo, feed_forward.w2) use init_std / sqrt(2 * n_layers), so the residual stream's
        variance does not grow with depth (GPT-2). RMSNorm weights are 1. A tied head shares the
        embedding's N(0, init_std), which keeps the first logits small (initial loss close to ln(vocab)).
        """
        if self.cfg.tie_embeddings:
            # Re-tie: to_empty() on a meta-device model gives the two modules separate parameters.
            self.output.weight = self.tok_embeddings.weight
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=std)
        for layer in self.layers:
            for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv,
                        layer.feed_forward.w1, layer.feed_forward.w3):
                nn.init.normal_(lin.weight, mean=0.0, std=std)
            nn.init.normal_(layer.attention.wo.weight, mean=0.0, std=out_std)
            nn.init.normal_(layer.feed_forward.w2.weight, mean=0.0, std=out_std)
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, mean=0.0, std=std)
        self.rope.reset_parameters()

    # ---- KV cache -------------------------------------------------------------------------------------

    def setup_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Allocate a static KV cache in every layer for generation of up to `max_len` positions."""
        max_len = self.cfg.max_seq_len if max_len is None else max_len
        if not 0 < max_len <= self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} must be in [1, max_seq_len={self.cfg.max_seq_len}]")
        weight = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                batch_size, max_len, self.cfg.kv_heads, self.cfg.head_dim, dtype or weight.dtype, weight.device
            )

    def clear_cache(self) -> None:
        """Free the KV cache; the model is back to its training form."""
        for layer in self.layers:
            layer.attention.kv_cache = None

    def move_cache_row(self, src: int, dst: int) -> None:
        """Copy cache row src over row dst in every layer (slot compaction in a continuous-batching server)."""
        for layer in self.layers:
            layer.attention.kv_cache.move_row(src, dst)

    @property
    def cache_len(self) -> int | None:
        cache = self.layers[0].attention.kv_cache
        return None if cache is None else cache.max_len

    # ---- forward ----------------------------------------------------------------------------------------

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int | torch.Tensor = 0,
        key_mask: torch.Tensor | None = None,
        cache_rows: slice | None = None,
        return_hidden: bool = False,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for tokens (B, T) at positions start_pos .. start_pos + T - 1.

        return_hidden: the final normed hidden states (B, T, dim) instead, the head's input, for a loss that
        applies the head itself in chunks (model/loss.py) rather than holding all B * T * vocab_size logits.

        Without a cache this is the training forward (causal over the T tokens). With a cache (setup_cache),
        the same call does prefill (T > 1) and decode (T == 1): keys/values are written at their positions and
        each query attends to cached keys at or before its own position. An int start_pos attends to the
        first start_pos + T cache slots; a 0-dim tensor start_pos (for compiled decode) attends to the whole
        cache with masked slots. A (B,) tensor start_pos gives every row its own positions (continuous
        batching: each row is a different request), read back to the host to bound the attended slots.
        cache_rows (a slice, default the first B rows) picks the cache rows the batch uses. key_mask,
        optional, hides key positions per row (left padding): (B, cache_len) with a cache, (B, T) without one.
        A padding query sees only itself; its logits are meaningless.

        doc_ids (B, T), training only (no cache, no key_mask): several documents packed into each row, attention
        and RoPE positions restarted per document (model/documents.py), as if each document were alone.
        """
        T = tokens.shape[1]
        cache_len = self.cache_len
        limit = self.cfg.max_seq_len if cache_len is None else cache_len
        per_row = isinstance(start_pos, torch.Tensor) and start_pos.dim() == 1
        if per_row and cache_len is None:
            raise ValueError("per-row start positions need a KV cache (setup_cache)")
        if per_row:
            last = int(start_pos.max()) + T  # the one host sync: attention reads only the slots in use
            if last > limit:
                raise ValueError(f"row positions up to {last - 1} exceed the limit of {limit} positions")
        elif isinstance(start_pos, int) and start_pos + T > limit:
            raise ValueError(f"positions {start_pos}..{start_pos + T - 1} exceed the limit of {limit} positions")
        if doc_ids is not None and (cache_len is not None or key_mask is not None
                                    or not isinstance(start_pos, int) or start_pos != 0):
            raise ValueError("doc_ids is for training forwards: no KV cache, no key_mask, start_pos 0")
        steps = torch.arange(T, device=tokens.device)
        if doc_ids is not None:
            positions = document_positions(doc_ids)  # (B, T): restart at each document
        else:
            positions = start_pos[:, None] + steps if per_row else steps + start_pos  # (B, T) per row, else (T,)
        cos, sin = self.rope(positions)
        if per_row or doc_ids is not None:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, head_dim // 2): broadcast over heads

        mask, kv_len = None, None
        if doc_ids is not None:
            mask = document_mask(doc_ids)  # (B, 1, T, T)
        elif per_row:
            kv_len = last
            key_pos = torch.arange(kv_len, device=tokens.device)
            mask = key_pos[None, None, :] <= positions[:, :, None]  # (B, T, kv_len): causal per row
            if key_mask is not None:
                own = key_pos[None, None, :] == positions[:, :, None]  # as below: no all-masked row
                mask = (mask & key_mask[:, None, :kv_len]) | own
            mask = mask[:, None]  # (B, 1, T, kv_len)
        elif cache_len is not None:
            kv_len = start_pos + T if isinstance(start_pos, int) else cache_len
            key_pos = torch.arange(kv_len, device=tokens.device)
            mask = key_pos[None, :] <= positions[:, None]  # (T, kv_len): explicit causal mask over the cache
            if key_mask is not None:
                # Every query keeps its own slot: a padding query then has no all-masked row, which some
                # attention kernels turn into NaN that would reach the real tokens' values in the next layer.
                own = key_pos[None, :] == positions[:, None]
                mask = (mask[None, None] & key_mask[:, None, None, :kv_len]) | own  # (B, 1, T, kv_len)
        elif key_mask is not None:
            # Without a cache the attention is causal over the T inputs; padding must be masked explicitly too.
            causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
            own = torch.eye(T, dtype=torch.bool, device=tokens.device)  # as above: no all-masked row
            mask = (causal[None, None] & key_mask[:, None, None, :T]) | own  # (B, 1, T, T)

        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, positions, mask, kv_len, cache_rows)
        h = self.norm(h)  # (B, T, dim)
        return h if return_hidden else self.output(h)  # (B, T, vocab_size)

    # ---- accounting -------------------------------------------------------------------------------------

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count (a tied matrix counted once). Without embeddings, the token embedding table is
        left out (for a tied model that is the shared head too)."""
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, PaLM convention: 6N + 12 * n_layers * n_heads * head_dim * seq_len.

        N counts the weights used in matmuls: every parameter but the embedding lookup, the output head
        included whether tied or not.
        """
        cfg = self.cfg
        n_matmul = self.num_params(include_embeddings=False)
        if cfg.tie_embeddings:
            n_matmul += self.output.weight.numel()
        return 6 * n_matmul + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
