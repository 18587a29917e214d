"""Tokenization helpers: ordered, bounded parallel map; per-document split rule; batching."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from data.encode import batch_documents, encode_documents, is_validation, ordered_map


def test_ordered_map_keeps_order_and_bounds_pending_work():
    lock = threading.Lock()
    live = {"now": 0, "max": 0}  # results created but not yet consumed

    def work(i: int) -> int:
        time.sleep(random.Random(i).random() * 0.003)
        with lock:
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
        return i * i

    here = []

    def run_here(i: int) -> int:
        here.append(i)
        return work(i)

    out = []
    with ThreadPoolExecutor(2) as pool:
        for r in ordered_map(range(200), run_here, lambda i: pool.submit(work, i), pool_slots=2, max_pending=6):
            with lock:
                live["now"] -= 1
            out.append(r)
    assert out == [i * i for i in range(200)]
    assert live["max"] <= 6
    assert 0 < len(here) < 200  # the caller helped when the pool was busy, and the pool did work too


def test_split_rule_is_a_deterministic_fraction():
    docs = [f"document {i}".encode() for i in range(4000)]
    val = [d for d in docs if is_validation(d, 0.1)]
    assert 300 < len(val) < 500
    assert val == [d for d in docs if is_validation(d, 0.1)]
    assert set(val) <= {d for d in docs if is_validation(d, 0.2)}  # a larger fraction only adds documents
    assert not any(is_validation(d, 0.0) for d in docs)


def test_encode_documents_routes_and_terminates_each_document(data_tokenizer):
    texts = [f"text number {i}\n" for i in range(50)]
    enc = encode_documents(data_tokenizer, texts, np.dtype("<u2"), 0.3)
    val_texts = [t for t in texts if is_validation(t.encode(), 0.3)]
    train_texts = [t for t in texts if t not in val_texts]
    for tokens, lengths, nbytes, want in ((enc.train_tokens, enc.train_lengths, enc.train_bytes, train_texts),
                                          (enc.val_tokens, enc.val_lengths, enc.val_bytes, val_texts)):
        docs = np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []
        assert [data_tokenizer.decode(d[:-1]) for d in docs] == want
        assert all(d[-1] == data_tokenizer.eos_id for d in docs)
        assert nbytes == sum(len(t.encode()) for t in want)


def test_batch_documents():
    texts = ["a" * 3, "b" * 5, "c" * 1, "d" * 10, "e"]
    batches = list(batch_documents(iter(texts), batch_chars=6))
    assert [t for b in batches for t in b] == texts
    assert batches == [["aaa", "bbbbb"], ["c", "dddddddddd"], ["e"]]
