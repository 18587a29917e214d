"""Next-token choice: repetition penalty, then greedy or temperature / top-k / top-p / min-p sampling.

The order follows Hugging Face's logits processors: the penalty edits raw logits; temperature scales them;
top-k, top-p and min-p each drop tokens (logit -inf) using probabilities of the tempered logits. Sampling
draws from a private torch.Generator, so the same seed gives the same tokens whatever else uses torch's RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from inference.errors import GenerationError

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. The defaults sample from the model's plain distribution."""

    temperature: float = 1.0  # 0 means greedy (argmax); otherwise logits are divided by it
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches top_p
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, name: Callable[[str], str] = str) -> None:
        """Raise GenerationError naming the first value out of range; `name` turns a field name into the name the
        user gave it (the CLI passes one that spells flags: top_p -> --top-p)."""
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"{name('temperature')} must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"{name('top_k')} must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"{name('top_p')} must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise GenerationError(f"{name('min_p')} must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(
                f"{name('repetition_penalty')} must be > 0 (1 disables it), got {self.repetition_penalty}")


# ---- logits -> logits ----------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on tokens marked in `seen` (B, V): positive logits divided by it, negative multiplied."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th included); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their total probability reaches p (always at least one)."""
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(-1) - probs  # (B, V): probability of the more likely tokens
    drop_sorted = before >= p  # the first token has before == 0 < p, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row, drawn from softmax(logits) by inverse transform: one uniform draw per row, scaled to
    the row's total, found in the cumulative probabilities. (B, V) -> (B,).

    v = (1 - u) * total lies in (0, total], so the first index whose cumulative sum reaches v exists and is
    never a zero-probability token (its sum equals the one before it). One random number per row instead of V
    (Exp(1) noise for every logit took ~0.1 ms of a ~2.5 ms CPU decode step at a 4k vocabulary), and no host
    sync (torch.multinomial has one on CUDA)."""
    probs = torch.softmax(logits.float(), dim=-1)
    cdf = probs.cumsum(-1)  # (B, V), non-decreasing
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)  # [0, 1)
    return torch.searchsorted(cdf, (1 - u) * cdf[:, -1:]).squeeze(-1)


# ---- the sampler -----------------------------------------------------------------------------------------------


class Sampler:
    """Chooses the next token of every row and remembers what each row has seen (for the penalty)."""

    def __init__(
        self,
        params: SamplingParams,
        prompts: Sequence[Sequence[int]],
        vocab_size: int,
        device: torch.device | str,
        seed: int = 0,
        allowed_vocab: int | None = None,
    ):
        params.validate()
        if not 0 <= seed < SEED_LIMIT:
            raise GenerationError(f"seed must be in [0, 2**63), got {seed}")
        self.params = params
        self.allowed_vocab = allowed_vocab  # ids >= this (model rows the tokenizer never uses) are never chosen
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.seen: torch.Tensor | None = None  # (B, V) bool, only kept when the penalty is on
        if params.repetition_penalty != 1:
            self.seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
            for row, ids in enumerate(prompts):
                self.seen[row, torch.as_tensor(list(ids), dtype=torch.long, device=device)] = True

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after the penalty, temperature and filters; the distribution the token is drawn from."""
        p = self.params
        if self.allowed_vocab is not None and self.allowed_vocab < logits.shape[-1]:
            logits = logits.clone()
            logits[:, self.allowed_vocab :] = float("-inf")
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, p.repetition_penalty)
        if p.greedy:
            return logits
        logits = logits.float() / p.temperature
        logits = top_k_filter(logits, p.top_k)
        logits = top_p_filter(logits, p.top_p)
        return min_p_filter(logits, p.min_p)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row: (B, V) logits -> (B,) ids."""
        logits = self.process(logits)
        if self.params.greedy:
            tokens = torch.argmax(logits, dim=-1)
        else:
            tokens = sample_from_logits(logits, self.generator)
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens
