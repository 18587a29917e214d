"""Generator: a checkpoint's model and tokenizer turned into text, streamed or in batches.

Length rule: a prompt of P tokens and max_new_tokens N must satisfy P + N <= max_seq_len. When they do not,
the prompt keeps only its last max_seq_len - N tokens and a PromptTruncatedWarning says so; N >= max_seq_len
is a GenerationError.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from core.device import resolve_device, resolve_dtype
from core.errors import CheckpointError
from inference.chat import fit_chat, reply_end_ids
from inference.decode import DecodeStep, generate_tokens, left_pad
from inference.errors import GenerationError, PromptTruncatedWarning
from inference.one_token import decode_layout
from inference.sampling import Sampler, SamplingParams
from inference.streaming import TextStream
from model import Transformer
from model.checkpoint import TOKENIZER, load_model
from Tokenizer import TextTokenizer, load_tokenizer

DEFAULT_MAX_NEW_TOKENS = 256
GREEDY = SamplingParams(temperature=0.0)


@dataclass
class Completion:
    """One generated continuation."""

    text: str  # the continuation (stop string and EOS not included)
    token_ids: list[int]  # its tokens (EOS not included; tokens that spelled a stop string are)
    finish_reason: str  # "eos" (EOS; in chat() also <|end_of_turn|>), "stop" (a stop string) or "length"
    prompt_tokens: int  # prompt length after any truncation


class Generator:
    """Prefill once, then decode token by token through the model's static KV cache."""

    def __init__(self, model: Transformer, tokenizer: TextTokenizer, compile: bool = False, use_kv_cache: bool = True):
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise CheckpointError(
                f"tokenizer has {tokenizer.vocab_size} ids but the model only {model.cfg.vocab_size} embeddings"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_kv_cache = use_kv_cache
        self.step = DecodeStep(compile=compile and use_kv_cache)
        self.last: list[Completion] = []  # completions of the latest stream() or generate() call

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        compile: bool = False,
        use_kv_cache: bool = True,
    ) -> Generator:
        """Load a checkpoint directory or a run's out_dir (its latest checkpoint) with its tokenizer; `device` and
        `dtype` are names (see core.device) or already resolved."""
        dev = device if isinstance(device, torch.device) else resolve_device(device, "device")
        dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev, "dtype")
        model, ckpt_dir = load_model(path, dev, dtype)
        if dev.type == "cpu":
            decode_layout(model)  # this model is only decoded: the layout batch-1 mat-vecs read fastest
        if not (ckpt_dir / TOKENIZER).is_dir():
            raise CheckpointError(f"checkpoint {ckpt_dir} has no {TOKENIZER}/ directory: cannot turn text into tokens")
        return cls(model, load_tokenizer(ckpt_dir / TOKENIZER), compile=compile, use_kv_cache=use_kv_cache)

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    @property
    def max_seq_len(self) -> int:
        return self.model.cfg.max_seq_len

    # ---- prompts -------------------------------------------------------------------------------------------

    def encode(self, prompt: str, bos: bool = False) -> list[int]:
        """Prompt text -> ids, BOS first if asked or if the tokenizer's model expects it (imported Llama models);
        an empty result is a GenerationError."""
        ids = self.tokenizer.encode(prompt, bos=bos or self.tokenizer.add_bos)
        if not ids:
            raise GenerationError("the prompt is empty: give some text, or start from the BOS token (--bos)")
        return ids

    def check_max_new_tokens(self, max_new_tokens: int) -> None:
        """A GenerationError unless 1 <= max_new_tokens < max_seq_len."""
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_new_tokens >= self.max_seq_len:
            raise GenerationError(
                f"max_new_tokens ({max_new_tokens}) must be less than the model's max_seq_len ({self.max_seq_len})"
            )

    def fit(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Apply the length rule: keep the last max_seq_len - max_new_tokens ids, warning when that cuts."""
        self.check_max_new_tokens(max_new_tokens)
        room = self.max_seq_len - max_new_tokens
        if len(ids) > room:
            warnings.warn(
                f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds max_seq_len "
                f"{self.max_seq_len}: keeping the last {room} prompt tokens",
                PromptTruncatedWarning,
                stacklevel=2,
            )
        return list(ids[-room:])

    # ---- tokens --------------------------------------------------------------------------------------------

    def _ensure_cache(self, batch_size: int, needed: int) -> int:
        """Set up (or reuse) a KV cache of at least `needed` slots; return its length.

        Dynamic decoding sizes the cache to the request. A static (compiled) step always uses max_seq_len slots
        and reuses the same buffers, so its graph (one per batch size) is never rebuilt.
        """
        cache = self.model.layers[0].attention.kv_cache
        want = self.max_seq_len if self.step.static else needed
        if cache is None or cache.k.shape[0] != batch_size or cache.max_len < needed:
            self.model.setup_cache(batch_size, want)
        return self.model.cache_len

    def token_steps(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingParams = GREEDY, seed: int = 0
    ) -> Iterator[torch.Tensor]:
        """New tokens of every prompt, one (B,) tensor per step, max_new_tokens steps (EOS does not stop it).

        Prompts must already fit (see fit()). Close the iterator to stop early.
        """
        needed = max(len(p) for p in prompts) + max_new_tokens
        if needed > self.max_seq_len:
            raise GenerationError(f"prompt + max_new_tokens ({needed}) exceeds max_seq_len ({self.max_seq_len})")
        sampler = Sampler(sampling, prompts, self.model.cfg.vocab_size, self.device, seed, self.tokenizer.vocab_size)
        if self.use_kv_cache:
            mask_len = self._ensure_cache(len(prompts), needed)
        else:
            self.model.clear_cache()
            mask_len = needed
        tokens, key_mask = left_pad(prompts, self.tokenizer.pad_id, mask_len, self.device)
        return generate_tokens(self.model, tokens, max_new_tokens, sampler, key_mask, self.use_kv_cache, self.step)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingParams = GREEDY, seed: int = 0
    ) -> list[list[int]]:
        """Exactly max_new_tokens new ids per prompt (EOS included like any token): for checks and benchmarks."""
        steps = list(self.token_steps(prompts, max_new_tokens, sampling, seed))
        return torch.stack(steps, dim=1).tolist()  # (B, max_new_tokens)

    # ---- text ----------------------------------------------------------------------------------------------

    def _prepare(
        self, prompts: Sequence[str], max_new_tokens: int, sampling: SamplingParams, stop: Sequence[str], bos: bool
    ) -> list[list[int]]:
        """Check every input before anything runs; return the fitted prompt ids."""
        sampling.validate()
        if any(not s for s in stop):
            raise GenerationError("stop strings must be non-empty")
        return [self.fit(self.encode(p, bos), max_new_tokens) for p in prompts]

    def _run(
        self, ids: list[list[int]], max_new_tokens: int, sampling: SamplingParams, stop: Sequence[str], seed: int,
        end_ids: frozenset[int] | None = None,
    ) -> Iterator[list[str]]:
        """Yield the new text of every row after each step (then once more for what finishing releases); a row
        ends at a token of end_ids (default: EOS), with finish_reason "eos"."""
        streams = [TextStream(self.tokenizer.decode, row, stop) for row in ids]
        steps = self.token_steps(ids, max_new_tokens, sampling, seed)
        end = frozenset({self.tokenizer.eos_id}) if end_ids is None else end_ids
        try:
            for new in steps:
                pieces = []
                for stream, token in zip(streams, new.tolist(), strict=True):
                    if stream.done:
                        pieces.append("")
                    elif token in end:
                        pieces.append(stream.finish("eos"))
                    else:
                        pieces.append(stream.push(token))
                yield pieces
                if all(s.done for s in streams):
                    break
        finally:
            steps.close()
        yield [s.finish("length") for s in streams]
        self.last = [
            Completion(s.text, s.token_ids, s.finish_reason, len(row)) for s, row in zip(streams, ids, strict=True)
        ]

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        seed: int = 0,
        bos: bool = False,
    ) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece (bad input raises here, before the first piece);
        the pieces joined are self.last[0].text once the iterator is exhausted."""
        ids = self._prepare([prompt], max_new_tokens, sampling, stop, bos)
        return (pieces[0] for pieces in self._run(ids, max_new_tokens, sampling, stop, seed) if pieces[0])

    def chat(
        self,
        messages: Sequence[Mapping],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> Iterator[str]:
        """Yield the assistant's reply to a conversation ([{"role": "system"|"user"|"assistant", "content": str},
        ...], rendered by the tokenizer's chat template) piece by piece, like stream(): it ends at
        <|end_of_turn|> (finish_reason "eos"), a stop string or max_new_tokens, and self.last[0] holds it.
        A history too long for the context loses its oldest turns (HistoryTruncatedWarning), never a system
        message. Bad input raises here, before the first piece."""
        sampling.validate()
        if any(not s for s in stop):
            raise GenerationError("stop strings must be non-empty")
        self.check_max_new_tokens(max_new_tokens)
        ids = [fit_chat(self.tokenizer, messages, max_new_tokens, self.max_seq_len)]
        pieces = self._run(ids, max_new_tokens, sampling, stop, seed, reply_end_ids(self.tokenizer))
        return (p[0] for p in pieces if p[0])

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        seed: int = 0,
        bos: bool = False,
    ) -> list[Completion]:
        """Continue one prompt or a batch of prompts of any lengths (left padding) in one call."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        ids = self._prepare(prompts, max_new_tokens, sampling, stop, bos)
        return self.complete(ids, max_new_tokens, sampling, stop, seed)

    def complete(
        self,
        ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams = GREEDY,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[Completion]:
        """generate() for prompts already turned into ids and fitted (see fit()): for callers that tokenize and
        truncate by their own rules, such as the lm-eval backend."""
        sampling.validate()
        if any(not s for s in stop):
            raise GenerationError("stop strings must be non-empty")
        if not ids:
            return []
        for _ in self._run([list(row) for row in ids], max_new_tokens, sampling, stop, seed):
            pass
        return self.last
