"""The decode loop, gpt-fast style: prefill the prompt once, then decode one token at a time.

    prefill           prompt (B, T) -> cache slots 0..T-1 filled, logits of the last position
    decode_one_token  one token (B, 1) at position pos -> its cache slot filled, next logits
    generate_tokens   prefill + decode steps, yielding one (B,) tensor of new tokens per step

Prompts of different lengths are left-padded to a common length T; key_mask (B, cache_len) hides the pad
slots of each row, so every row sees only its own tokens. Positions are shared by the batch, so a row padded
by n runs at positions shifted by n; RoPE attention depends on relative positions only, which makes the row's
result the same as when it runs alone (up to float rounding).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from inference.one_token import OneTokenStep
from model import Transformer

Sample = Callable[[torch.Tensor], torch.Tensor]  # (B, vocab) logits -> (B,) token ids
COMPILE_FAILED = "torch.compile of the decode step failed"  # start of the warning when compile falls back


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, cache_len: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-pad prompts to their longest length T: tokens (B, T) and key_mask (B, cache_len), False on pad
    slots; the mask is None when no row is padded."""
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    key_mask = torch.ones(len(prompts), cache_len, dtype=torch.bool)
    for row, ids in enumerate(prompts):
        pad = T - len(ids)
        tokens[row, pad:] = torch.as_tensor(list(ids), dtype=torch.long)
        key_mask[row, :pad] = False
    if key_mask.all():
        return tokens.to(device), None
    return tokens.to(device), key_mask.to(device)


def prefill(model: Transformer, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the prompt tokens (B, T) through the cached model from position 0; logits of the last one (B, V)."""
    return model(tokens, start_pos=0, key_mask=key_mask)[:, -1]


def decode_one_token(
    model: Transformer, token: torch.Tensor, pos: int | torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Feed one token per row (B, 1) at position `pos` through the cache; next-token logits (B, V)."""
    return model(token, start_pos=pos, key_mask=key_mask)[:, -1]


def recompute_last(model: Transformer, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Without a cache: the full causal forward over tokens (B, L); logits of the last position (B, V)."""
    return model(tokens, key_mask=key_mask)[:, -1]


def _plain(model: nn.Module) -> bool:
    """True when no module of `model` has forward hooks and no parameter is a DTensor (not sharded or wrapped):
    then reading its weights directly computes what calling its modules does. A walk over every module and
    parameter (~0.4 ms for tiny.yaml, 12% of its decode step): DecodeStep does it once per model."""
    from torch.distributed.tensor import DTensor

    return not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()) and not any(
        isinstance(p, DTensor) for p in model.parameters())


class DecodeStep:
    """decode_one_token, in one of two forms.

    Dynamic (eager default): an int position, so attention reads only the filled cache slots, through
    OneTokenStep (inference/one_token.py), which skips the general forward's per-step mask and RoPE building; the
    cheapest form without compilation. Static (compile=True, or static=True to run it eagerly): a 0-dim tensor
    position, attention over the whole static cache with a mask, so every position runs the same graph. That
    is what compile needs: on CUDA the step is captured once as a CUDA graph (mode="reduce-overhead"), which
    removes the per-kernel launch cost that dominates single-token decode. If compiling fails (no Triton, no C++
    compiler), it warns once and continues eagerly.
    """

    def __init__(self, compile: bool = False, static: bool = False):
        self.static = static or compile
        self.compile = compile  # cleared if compiling fails
        self._compiled: Callable | None = None  # built at the first call, for that call's device
        self._pos: torch.Tensor | None = None  # device-side position, updated in place (no host sync)
        self._one_token = OneTokenStep()
        self._plain: tuple[nn.Module, bool] | None = None  # (model, _plain(model)) of the latest model decoded

    def reset(self) -> None:
        """Start of a generation: the one-token step takes its weight views again (the model may have been moved
        or reloaded since the last one)."""
        self._one_token.reset()

    def _is_plain(self, model: nn.Module) -> bool:
        """_plain(model), checked at the first step of each model: a Generator (one DecodeStep) keeps its model,
        and sharding or hooking happens before generation, not between two tokens."""
        if self._plain is None or self._plain[0] is not model:
            self._plain = (model, _plain(model))
        return self._plain[1]

    def __call__(
        self, model: Transformer, token: torch.Tensor, pos: int, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Next-token logits (B, V) for token (B, 1) at position pos."""
        if not self.static:
            # Dropout on, or a model whose modules do work around their forward (FSDP all-gathers sharded weights
            # in pre-forward hooks; OneTokenStep reads weights directly): only the full forward is right.
            if model.training or not self._is_plain(model):
                return decode_one_token(model, token, pos, key_mask)
            return self._one_token(model, token, pos, key_mask)
        if self._pos is None or self._pos.device != token.device:
            self._pos = torch.zeros((), dtype=torch.long, device=token.device)
        self._pos.fill_(pos)
        if not self.compile:
            return decode_one_token(model, token, self._pos, key_mask)
        if self._compiled is not None:
            if token.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may now be overwritten
            return self._compiled(model, token, self._pos, key_mask)
        return self._first_compiled_call(model, token, key_mask)

    def _first_compiled_call(
        self, model: Transformer, token: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Compile for this device and run; on failure warn and stay eager (a later error is a real one)."""
        mode = "reduce-overhead" if token.is_cuda else None  # CUDA graphs only exist on CUDA
        compiled = torch.compile(decode_one_token, mode=mode, fullgraph=True)
        try:
            if token.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()
            logits = compiled(model, token, self._pos, key_mask)
        except Exception as e:  # compiling needs a toolchain (Triton, or a C++ compiler on CPU)
            warnings.warn(f"{COMPILE_FAILED}, decoding eagerly: {e}", stacklevel=3)
            self.compile = False
            return decode_one_token(model, token, self._pos, key_mask)
        self._compiled = compiled
        return logits


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    tokens: torch.Tensor,
    max_new_tokens: int,
    sample: Sample,
    key_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    step: DecodeStep | None = None,
) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens tensors of shape (B,), one per step, continuing the left-padded prompt (B, T).

    With use_cache the model must have a cache of at least T + max_new_tokens - 1 slots (setup_cache) and
    key_mask, if any, spans the cache. Without it (no cache set up), every step recomputes the whole context;
    key_mask then spans at least T + max_new_tokens - 1 positions. Stopping early is the caller's business:
    close the iterator.
    """
    T = tokens.shape[1]
    if use_cache:
        step = step or DecodeStep()
        step.reset()
        logits = prefill(model, tokens, key_mask)  # (B, V)
        for i in range(max_new_tokens):
            next_token = sample(logits)  # (B,)
            yield next_token
            if i + 1 < max_new_tokens:
                logits = step(model, next_token[:, None], T + i, key_mask)
    else:
        context = tokens
        for i in range(max_new_tokens):
            next_token = sample(recompute_last(model, context, key_mask))
            yield next_token
            if i + 1 < max_new_tokens:
                context = torch.cat([context, next_token[:, None]], dim=1)  # (B, T + i + 1)
