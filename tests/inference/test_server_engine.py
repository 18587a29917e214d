"""The continuous-batching engine without HTTP: greedy replies equal Generator's alone and under concurrency
(requests joining a running batch at different steps), seeded sampling is reproducible, slots are freed on
finish and on cancel, and a full engine refuses at once."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from inference import Generator, SamplingParams
from inference.server import engine as engine_module
from inference.server.engine import EngineOverloaded, Failed, Finished, Piece, SeqSpec
from tests.inference.serving import served_engine

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["The quick brown", "def add(a, b):", "Hello", "Coffee and tea, naive cafes, done", "print(", "the end"]
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def generator(random_ckpt) -> Generator:
    """The reference; the engine gets its own copy of the model (each owns its KV cache)."""
    return Generator.from_checkpoint(random_ckpt, "cpu", "fp32")


@pytest.fixture
def engine(random_ckpt):
    engine, _ = served_engine(random_ckpt, max_batch=4, max_queue=8)
    yield engine
    engine.close()


class Collector:
    """Gathers one request's events from the scheduler thread."""

    def __init__(self, n: int):
        self.texts, self.reasons, self.tokens = [""] * n, [None] * n, [0] * n
        self.events: queue.Queue = queue.Queue()
        self.remaining = n

    def __call__(self, event) -> None:
        self.events.put(event)

    def wait(self) -> Collector:
        while self.remaining:
            event = self.events.get(timeout=TIMEOUT_S)
            assert not isinstance(event, Failed), event.message
            if isinstance(event, Piece):
                self.texts[event.index] += event.text
            elif isinstance(event, Finished):
                self.reasons[event.index], self.tokens[event.index] = event.reason, event.completion_tokens
                self.remaining -= 1
        return self


def _spec(gen: Generator, prompt: str, max_new: int, sampling=GREEDY, seed: int = 0, stop=()) -> SeqSpec:
    return SeqSpec(gen.encode(prompt), max_new, sampling, tuple(stop), frozenset({gen.tokenizer.eos_id}), seed)


def test_greedy_alone_equals_generator(generator, engine):
    for prompt in PROMPTS[:3]:
        want = generator.generate(prompt, 24, GREEDY)[0]
        got = Collector(1)
        engine.submit([_spec(generator, prompt, 24)], got)
        got.wait()
        assert got.texts[0] == want.text
        assert got.tokens[0] == len(want.token_ids)
        assert got.reasons[0] == ("length" if want.finish_reason == "length" else "stop")


@pytest.mark.parametrize("prefill_tokens", [engine_module.PREFILL_TOKENS, 12], ids=["one_prefill", "budget"])
def test_greedy_under_concurrency_equals_generator(generator, engine, monkeypatch, prefill_tokens):
    # 6 requests of different lengths on 4 slots: some wait, and each joins the batch mid-way through the others.
    # A small prefill budget admits the waiting ones a few at a time.
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", prefill_tokens)
    lengths = [30, 7, 19, 12, 25, 3]
    wants = [generator.generate(p, n, GREEDY)[0].text for p, n in zip(PROMPTS, lengths, strict=True)]
    collectors = [Collector(1) for _ in PROMPTS]
    threads = [
        threading.Thread(target=engine.submit, args=([_spec(generator, p, n)], c))
        for p, n, c in zip(PROMPTS, lengths, collectors, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.wait().texts[0] for c in collectors] == wants
    assert engine.load()["running"] == 0 and engine.load()["waiting"] == 0


def test_seeded_sampling_matches_generator_and_n_choices_use_seed_plus_i(generator, engine):
    sampling = SamplingParams(temperature=1.0, top_p=0.9)
    got = Collector(3)
    engine.submit([_spec(generator, "Hello", 20, sampling, seed=7 + i) for i in range(3)], got)
    got.wait()
    for i in range(3):
        assert got.texts[i] == generator.generate("Hello", 20, sampling, seed=7 + i)[0].text


def test_stop_string_ends_the_choice_before_it(generator, engine):
    full = generator.generate(PROMPTS[0], 30, GREEDY)[0].text
    stop = full[10:13]
    got = Collector(1)
    engine.submit([_spec(generator, PROMPTS[0], 30, stop=[stop])], got)
    got.wait()
    assert got.texts[0] == full[: full.index(stop)]
    assert got.reasons[0] == "stop"


def test_cancel_frees_the_slot_and_full_engine_refuses(generator, random_ckpt):
    engine, gate = served_engine(random_ckpt, max_batch=1, max_queue=1)
    try:
        first, second = Collector(1), Collector(1)
        gate.clear()  # hold the scheduler in the first request's prefill: its slot stays taken
        ticket = engine.submit([_spec(generator, "Hello", 90)], first)
        while engine.load()["running"] == 0:  # the scheduler takes it into the slot, then waits at the gate
            time.sleep(0.005)
        engine.submit([_spec(generator, "print(", 5)], second)
        with pytest.raises(EngineOverloaded):
            engine.submit([_spec(generator, "the end", 5)], Collector(1))
        assert engine.load() == {"running": 1, "waiting": 1, "slots": 1}
        engine.cancel(ticket)
        gate.set()
        second.wait()  # it only gets the slot once the cancelled request has left it
        assert second.reasons[0] == "length"
        assert engine.load() == {"running": 0, "waiting": 0, "slots": 1}
    finally:
        engine.close()
