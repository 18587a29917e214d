"""Continuous batching: one scheduler thread owns the model and runs every admitted request in shared steps.

Each request (one per choice) takes a slot: a row of the KV cache. Slots in use are always rows 0..n-1, so a
decode step is one forward over cache rows [0, n) with per-row positions. Between steps the scheduler admits
waiting requests into the next free rows (prefilled together, right-padded, from position 0) and removes
finished or cancelled ones, moving the last row into the freed one. A request therefore joins the running
batch at the next step and leaves the moment it finishes.

Other threads talk to the engine through `submit` (bounded: over capacity it raises EngineOverloaded at once)
and `cancel`; results come back through the `emit` callback given to `submit`, called on the scheduler thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from inference.sampling import Sampler, SamplingParams
from inference.streaming import TextStream
from model import Transformer
from Tokenizer import Tokenizer

log = logging.getLogger(__name__)
PREFILL_TOKENS = 2048  # padded prompt tokens prefilled together at most (the logits alone are this x vocab floats)


class EngineOverloaded(Exception):
    """Every slot is busy and the waiting queue is full; the caller should answer 503 and retry later."""


@dataclass(frozen=True)
class SeqSpec:
    """One sequence to generate (one choice of a request). The prompt must fit: len(prompt) + max_new_tokens
    <= the model's max_seq_len."""

    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()  # stop strings (the text ends before them)
    stop_ids: frozenset[int] = frozenset()  # tokens that end the sequence (EOS, end of turn)
    seed: int = 0


@dataclass(frozen=True)
class Piece:
    """New text of choice `index`."""

    index: int
    text: str


@dataclass(frozen=True)
class Finished:
    """Choice `index` is complete. reason: "stop" (stop token or string) or "length" (max_new_tokens)."""

    index: int
    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The engine hit an internal error while running this request (a bug; logged with its traceback)."""

    message: str


Event = Piece | Finished | Failed


@dataclass(eq=False)
class Ticket:
    """A submitted request: its sequences, its event sink, and whether its client has gone."""

    specs: list[SeqSpec]
    emit: Callable[[Event], None]
    cancelled: bool = False


@dataclass(eq=False)
class _Seq:
    """A sequence in a slot: what is in its cache row and what it has produced."""

    ticket: Ticket
    index: int
    spec: SeqSpec
    stream: TextStream
    sampler: Sampler | None  # None: plain greedy, chosen by one argmax over the batch
    length: int = 0  # tokens in its cache row
    next_token: int = -1  # sampled but not yet fed to the model
    generated: list[int] = field(default_factory=list)


def _plain_greedy(params: SamplingParams) -> bool:
    return params.greedy and params.repetition_penalty == 1


class Engine:
    """Owns the model on one scheduler thread; `max_batch` slots run together, `max_queue` requests wait."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch: int = 16, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = model.tok_embeddings.weight.device
        self._waiting: deque[tuple[Ticket, int]] = deque()  # (ticket, choice index), admitted in order
        self._active: list[_Seq] = []  # slot i holds self._active[i]
        self._admitting: list[tuple[Ticket, int]] = []  # taken from the queue, prefill not yet in _active
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (a step serves every active slot)

    # ---- other threads ---------------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Allocate the slots' KV cache and start the scheduler thread."""
        self.model.setup_cache(self.max_batch, self.model.cfg.max_seq_len)
        self._thread = threading.Thread(target=self._run, name="mini-llm-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the scheduler thread (requests still running get no further events)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.model.clear_cache()

    def submit(self, specs: Sequence[SeqSpec], emit: Callable[[Event], None]) -> Ticket:
        """Queue a request's sequences; raise EngineOverloaded if they do not fit in the free slots + queue."""
        limit = self.model.cfg.max_seq_len
        for spec in specs:  # the API checks these first; a bad one here is a caller's bug
            if not spec.prompt or spec.max_new_tokens < 1 or len(spec.prompt) + spec.max_new_tokens > limit:
                raise ValueError(f"a prompt of {len(spec.prompt)} tokens + max_new_tokens {spec.max_new_tokens} "
                                 f"must be 1..{limit} tokens with at least one of each")
        ticket = Ticket(list(specs), emit)
        with self._cond:
            load = len(self._active) + len(self._admitting) + len(self._waiting)
            if load + len(specs) > self.max_batch + self.max_queue:
                raise EngineOverloaded(
                    f"server overloaded: {len(self._active)} requests running and {len(self._waiting)} waiting"
                )
            self._waiting.extend((ticket, i) for i in range(len(specs)))
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request (its client went away): its slots are freed before the next step."""
        with self._cond:
            ticket.cancelled = True
            self._cond.notify_all()

    def load(self) -> dict[str, int]:
        """Sequences running (cancelled ones excluded: they leave before the next step) and waiting now."""
        with self._cond:
            running = sum(not s.ticket.cancelled for s in self._active)
            running += sum(not ticket.cancelled for ticket, _ in self._admitting)
            waiting = sum(not ticket.cancelled for ticket, _ in self._waiting)
            return {"running": running, "waiting": waiting, "slots": self.max_batch}

    # ---- the scheduler thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._closing and not self._active and not self._waiting:
                    self._cond.wait()
                if self._closing:
                    return
                self._waiting = deque(w for w in self._waiting if not w[0].cancelled)
                admitted = self._take(self._free_slots())
                self._admitting = admitted
            try:
                self._remove([i for i, s in enumerate(self._active) if s.ticket.cancelled])
                if admitted:
                    self._prefill(admitted)
                if self._active:
                    self._decode()
            except Exception as e:  # a bug: fail the requests in flight, keep serving the next ones
                log.exception("scheduler step failed")
                for ticket in {s.ticket for s in self._active} | {t for t, _ in admitted}:
                    ticket.emit(Failed(f"internal error: {type(e).__name__}: {e}"))
                with self._cond:
                    self._active.clear()
                    self._admitting = []

    def _take(self, free: int) -> list[tuple[Ticket, int]]:
        """The next waiting sequences for up to `free` slots, in order, while their padded prefill stays within
        PREFILL_TOKENS (one always goes): bounds the prefill's memory and the pause it adds to the running ones."""
        taken, longest = [], 0
        while self._waiting and len(taken) < free:
            ticket, index = self._waiting[0]
            longest = max(longest, len(ticket.specs[index].prompt))
            if taken and (len(taken) + 1) * longest > PREFILL_TOKENS:
                break
            taken.append(self._waiting.popleft())
        return taken

    def _free_slots(self) -> int:
        return self.max_batch - sum(not s.ticket.cancelled for s in self._active)  # cancelled: removed next

    def _remove(self, slots: list[int]) -> None:
        """Free these slots, keeping the used ones contiguous: the last slot's cache row moves into each gap."""
        for slot in sorted(slots, reverse=True):  # a removed last slot goes first, so no removed row is moved
            last = len(self._active) - 1
            if slot != last:
                self.model.move_cache_row(last, slot)
            with self._cond:  # submit() and load() count the slots
                self._active[slot] = self._active[last]
                self._active.pop()

    def _new_seq(self, ticket: Ticket, index: int) -> _Seq:
        spec = ticket.specs[index]
        sampler = None
        if not _plain_greedy(spec.sampling):
            sampler = Sampler(
                spec.sampling, [spec.prompt], self.model.cfg.vocab_size, self.device, spec.seed,
                self.tokenizer.vocab_size,
            )
        return _Seq(ticket, index, spec, TextStream(self.tokenizer.decode, spec.prompt, spec.stop), sampler)

    def _prefill(self, admitted: list[tuple[Ticket, int]]) -> None:
        """Run the new prompts into the next free rows together: right-padded, each from position 0 (the pads
        after a prompt are invisible to it under the causal mask and are overwritten by its decode steps)."""
        seqs = [self._new_seq(t, i) for t, i in admitted]
        lengths = [len(s.spec.prompt) for s in seqs]
        tokens = torch.full((len(seqs), max(lengths)), self.tokenizer.pad_id, dtype=torch.long)
        for row, s in enumerate(seqs):
            tokens[row, : lengths[row]] = torch.tensor(s.spec.prompt)
        first = len(self._active)
        start = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        logits = self.model(tokens.to(self.device), start_pos=start, cache_rows=slice(first, first + len(seqs)))
        last = torch.tensor(lengths, device=self.device) - 1
        logits = logits[torch.arange(len(seqs), device=self.device), last]  # (k, V): each prompt's last position
        for s, n in zip(seqs, lengths, strict=True):
            s.length = n
        with self._cond:
            self._active.extend(seqs)
            self._admitting = []
        self._advance(range(first, first + len(seqs)), logits)

    def _decode(self) -> None:
        """One step for every slot: feed each row's pending token at its own position."""
        tokens = torch.tensor([[s.next_token] for s in self._active], device=self.device)  # (n, 1)
        start = torch.tensor([s.length for s in self._active], device=self.device)  # (n,)
        logits = self.model(tokens, start_pos=start, cache_rows=slice(0, len(self._active)))[:, -1]  # (n, V)
        self.steps += 1
        for s in self._active:
            s.length += 1
        self._advance(range(len(self._active)), logits)

    def _choose(self, slots: range, logits: torch.Tensor) -> list[int]:
        """Next token of each slot from its logits row: one argmax for the plain greedy rows, else its sampler."""
        chosen = torch.argmax(logits[:, : self.tokenizer.vocab_size], dim=-1).tolist()  # ids the tokenizer knows
        for row, slot in enumerate(slots):
            sampler = self._active[slot].sampler
            if sampler is not None:
                chosen[row] = int(sampler(logits[row : row + 1])[0])
        return chosen

    def _advance(self, slots: range, logits: torch.Tensor) -> None:
        """Take each slot's next token, emit its new text, and free the slots that finished."""
        done = []
        for slot, token in zip(slots, self._choose(slots, logits), strict=True):
            s = self._active[slot]
            if s.ticket.cancelled:  # its client left during the step
                done.append(slot)
                continue
            if token in s.spec.stop_ids:
                piece = s.stream.finish("stop")
            else:
                s.generated.append(token)
                piece = s.stream.push(token)
                if not s.stream.done and len(s.generated) == s.spec.max_new_tokens:
                    piece += s.stream.finish("length")
            if piece:
                s.ticket.emit(Piece(s.index, piece))
            if s.stream.done:
                reason = "length" if s.stream.finish_reason == "length" else "stop"
                s.ticket.emit(Finished(s.index, reason, len(s.spec.prompt), len(s.generated)))
                done.append(slot)
            else:
                s.next_token = token
        self._remove(done)


