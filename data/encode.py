"""Parallel tokenization: document batches go to a process pool, results come back in order, work in flight is
bounded so memory stays flat however large the corpus."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from Tokenizer import Tokenizer


@dataclass
class EncodedBatch:
    """One batch of documents split into train and val, each as concatenated tokens plus per-document sizes."""

    train_tokens: np.ndarray
    train_lengths: np.ndarray  # tokens per document, EOS included
    train_bytes: int  # UTF-8 bytes of the train documents' text
    val_tokens: np.ndarray
    val_lengths: np.ndarray
    val_bytes: int

    @property
    def text_bytes(self) -> int:
        return self.train_bytes + self.val_bytes


def is_validation(text_utf8: bytes, val_fraction: float) -> bool:
    """Deterministic per-document split: the first 8 bytes of blake2b(text) as a fraction of 2**64."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text_utf8, digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def encode_documents(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype, val_fraction: float) -> EncodedBatch:
    """Tokenize texts (each followed by EOS) and route every document to train or val."""
    ids = tokenizer.encode_batch(texts, eos=True, num_threads=1)  # parallelism comes from the process pool
    docs: dict[bool, list[list[int]]] = {False: [], True: []}  # keyed by "is validation"
    nbytes = {False: 0, True: 0}
    for text, doc in zip(texts, ids, strict=True):
        raw = text.encode("utf-8")
        val = is_validation(raw, val_fraction)
        docs[val].append(doc)
        nbytes[val] += len(raw)

    def pack(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        tokens = np.fromiter(itertools.chain.from_iterable(docs), dtype=dtype, count=int(lengths.sum()))
        return tokens, lengths

    return EncodedBatch(*pack(docs[False]), nbytes[False], *pack(docs[True]), nbytes[True])


# ---- worker processes -----------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.load(tokenizer_dir)


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


def encode_stream(
    batches: Iterable[list[str]], tokenizer: Tokenizer, dtype: np.dtype, val_fraction: float, workers: int
) -> Iterator[EncodedBatch]:
    """EncodedBatch for each batch, in input order; workers > 1 uses that many processes."""
    if workers <= 1:
        for texts in batches:
            yield encode_documents(tokenizer, texts, dtype, val_fraction)
        return
    # spawn, not fork: the caller may be a training process with threads (CUDA, tqdm), which fork can deadlock.
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(str(tokenizer.directory),)
    ) as pool:
        yield from ordered_map(lambda texts: pool.submit(_encode_in_worker, texts, dtype, val_fraction), batches,
                               max_in_flight=2 * workers, cancel=lambda: pool.shutdown(cancel_futures=True))


def ordered_map(
    submit: Callable[[object], Future], items: Iterable, max_in_flight: int, cancel: Callable[[], None]
) -> Iterator:
    """Results of submit(item) in item order, with at most max_in_flight futures pending (the bound on memory)."""
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if pending:  # stopped early (error or interrupt): drop queued work instead of finishing it
            cancel()
