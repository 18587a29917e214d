"""Parallel tokenization: document batches go to a process pool (and to this process when the pool is busy),
results come back in input order, and the work held at once is bounded so memory stays flat whatever the corpus."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from Tokenizer import TextTokenizer, load_tokenizer


@dataclass
class EncodedBatch:
    """One batch of documents split into train and val, each as concatenated tokens plus per-document sizes."""

    train_tokens: np.ndarray
    train_lengths: np.ndarray  # tokens per document, EOS included
    train_bytes: int  # UTF-8 bytes of the train documents' text
    val_tokens: np.ndarray
    val_lengths: np.ndarray
    val_bytes: int
    is_val: np.ndarray  # bool per document, in batch order: how the two splits interleave (data/splits.py)
    doc_bytes: np.ndarray  # int64 UTF-8 bytes of each document's text, in batch order

    @property
    def text_bytes(self) -> int:
        return self.train_bytes + self.val_bytes


def is_validation(text_utf8: bytes, val_fraction: float) -> bool:
    """Deterministic per-document split: the first 8 bytes of blake2b(text) as a fraction of 2**64."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text_utf8, digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def encode_documents(tokenizer: TextTokenizer, texts: list[str], dtype: np.dtype, val_fraction: float) -> EncodedBatch:
    """Tokenize texts (each followed by EOS, and preceded by BOS when the tokenizer's model expects it, as Llama's
    do) and route every document to train or val."""
    # One thread: parallelism comes from the process pool.
    ids = tokenizer.encode_batch(texts, bos=tokenizer.add_bos, eos=True, num_threads=1)
    docs: dict[bool, list[list[int]]] = {False: [], True: []}  # keyed by "is validation"
    nbytes = {False: 0, True: 0}
    is_val = np.zeros(len(texts), dtype=bool)
    doc_bytes = np.zeros(len(texts), dtype=np.int64)
    for i, (text, doc) in enumerate(zip(texts, ids, strict=True)):
        raw = text.encode("utf-8")
        val = is_val[i] = is_validation(raw, val_fraction)
        docs[val].append(doc)
        nbytes[val] += len(raw)
        doc_bytes[i] = len(raw)

    def pack(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        tokens = np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=int(lengths.sum()))
        return tokens, lengths

    return EncodedBatch(*pack(docs[False]), nbytes[False], *pack(docs[True]), nbytes[True], is_val, doc_bytes)


# ---- worker processes -----------------------------------------------------------------------------------------

_worker_tokenizer: TextTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _encode_in_worker(texts: list[str], dtype: np.dtype, val_fraction: float) -> EncodedBatch:
    return encode_documents(_worker_tokenizer, texts, dtype, val_fraction)


def batch_documents(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Group texts into lists of about batch_chars characters (one long document makes a batch by itself)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class ParallelEncoder:
    """Tokenizes document batches on `workers` processes: this one plus a pool of workers - 1."""

    def __init__(self, tokenizer: TextTokenizer, dtype: np.dtype, val_fraction: float, workers: int):
        self.tokenizer, self.dtype, self.val_fraction, self.workers = tokenizer, dtype, val_fraction, workers
        self._pool = None
        if workers > 1:
            # spawn, not fork: numpy (OpenBLAS), torch and CUDA start threads, and forking a threaded process can
            # deadlock the child. Spawned workers import their modules afresh (about half a second).
            self._pool = ProcessPoolExecutor(workers - 1, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(str(tokenizer.directory),))

    def map(self, batches: Iterable[list[str]]) -> Iterator[EncodedBatch]:
        """EncodedBatch for each batch, in input order."""
        run_here = lambda texts: encode_documents(self.tokenizer, texts, self.dtype, self.val_fraction)
        if self._pool is None:
            return map(run_here, batches)
        submit = lambda texts: self._pool.submit(_encode_in_worker, texts, self.dtype, self.val_fraction)
        return ordered_map(batches, run_here, submit, pool_slots=2 * (self.workers - 1), max_pending=4 * self.workers)

    def close(self) -> None:
        """Stop the pool; queued work is dropped (after an error there is no one to take it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParallelEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ordered_map(items: Iterable, run_here: Callable, submit: Callable[[object], Future], pool_slots: int,
                max_pending: int) -> Iterator:
    """Results for items, in order. An item goes to the pool while fewer than pool_slots pool jobs are unfinished;
    otherwise this process runs it itself instead of waiting (which also hides the pool's start-up time). At most
    max_pending results are held, which bounds memory however long `items` is."""
    pending: deque[Future] = deque()
    for item in items:
        if sum(not f.done() for f in pending) < pool_slots:
            pending.append(submit(item))
        else:
            here: Future = Future()
            here.set_result(run_here(item))
            pending.append(here)
        while pending and (pending[0].done() or len(pending) >= max_pending):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
