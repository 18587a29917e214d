"""Route encoded documents to the train and val shard writers, in source order, so that a small corpus still gets a
validation split large enough to evaluate on.

Each document (or piece of a cut document, see data/pieces.py) goes to the split its content hash chooses
(data/encode.py). On a small corpus that leaves the val split empty or tiny: one 1 MB novel in 128 pieces with
val_fraction 0.005 has no validation piece 53% of the time, and one piece (about 2.4K tokens) is less than a
single validation micro batch of the tiny preset (16 x 257 tokens). So when val_fraction > 0 the val split is
topped up at the end of the corpus: if it holds fewer than

    min(MIN_VAL_TOKENS, ceil(MAX_VAL_SHARE * corpus tokens))

tokens, the shortest run of the corpus's last documents that brings it there moves to val (never the train
split's only document). Large corpora never reach this rule (0.5% of 3.3M tokens is already 16K); a 1 MB novel
gets about 16K validation tokens, about 5% of it. When the hash rule instead left the train split empty (val_fraction
near 1), the last document moves to train. To move documents at the end without knowing in advance where the
corpus ends, the sink holds back the corpus's latest documents, at least MIN_VAL_TOKENS tokens of them, and
writes the rest; moving only a suffix keeps each split in source order and the result independent of the worker
count.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.pieces import PIECE_RULE
from data.shards import SplitWriter

if TYPE_CHECKING:  # data.encode imports the tokenizer; data/dataset_dir.py needs only SPLIT_RULE from here
    from data.encode import EncodedBatch

SPLITS = ("train", "val")
MIN_VAL_TOKENS = 1 << 14  # 16,384: four validation micro batches of the tiny preset (16 x 257 tokens)
MAX_VAL_SHARE = 0.05  # the top-up never asks for more than this share of the corpus's tokens
FALLBACK_RULE = (f"when val_fraction > 0 and the val split holds fewer than min({MIN_VAL_TOKENS}, "
                 f"ceil({MAX_VAL_SHARE} * corpus tokens)) tokens, the shortest run of the corpus's last documents "
                 "(or pieces) that reaches it moves to val, never leaving train empty; when train is empty, the "
                 "last document moves to train")
# The whole rule, recorded in every manifest and hashed into the default dataset directory (data/dataset_dir.py),
# so a dataset built under another rule is never taken for an up-to-date one.
SPLIT_RULE = (f"{PIECE_RULE}; a document (or piece) is val when blake2b(utf8 text, digest_size=8) as "
              f"little-endian uint64 < val_fraction * 2**64; {FALLBACK_RULE}")


@dataclass
class _Doc:
    """One held-back document: its split, tokens (EOS included) and UTF-8 text bytes."""

    split: str
    tokens: np.ndarray
    nbytes: int


class SplitSink:
    """Writes EncodedBatches into `{split}_NNNNNN.bin` shards and counts tokens, bytes and documents per split."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, val_fraction: float):
        self.writers = {split: SplitWriter(directory, split, dtype, shard_tokens) for split in SPLITS}
        self.val_fraction = val_fraction
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        # What the top-up did: None, or {"split", "documents", "tokens"} moved to that split at the end.
        self.fallback: dict | None = None
        self._held: deque[_Doc] = deque()  # the corpus's latest documents, at least MIN_VAL_TOKENS tokens of them
        self._held_tokens = 0

    def add(self, enc: EncodedBatch) -> None:
        """Write a batch's documents, except the latest ones, which are held back until close() (or until later
        documents hold MIN_VAL_TOKENS tokens)."""
        n = len(enc.is_val)
        lengths = np.zeros(n, dtype=np.int64)  # tokens per document, in batch order
        lengths[~enc.is_val], lengths[enc.is_val] = enc.train_lengths, enc.val_lengths
        # Hold the shortest suffix of the batch with MIN_VAL_TOKENS tokens (the whole batch when it has fewer).
        from_end = np.cumsum(lengths[::-1])
        keep = min(n, int(np.searchsorted(from_end, MIN_VAL_TOKENS)) + 1)
        head = n - keep
        if head:  # this batch's own tail is long enough: everything held before it can go
            while self._held:
                self._write_doc(self._held.popleft())
            self._write_head(enc, head)
        starts = {"train": int(enc.train_lengths[: int((~enc.is_val[:head]).sum())].sum()),
                  "val": int(enc.val_lengths[: int(enc.is_val[:head].sum())].sum())}
        for i in range(head, n):
            split = "val" if enc.is_val[i] else "train"
            source = enc.val_tokens if split == "val" else enc.train_tokens
            length = int(lengths[i])
            self._held.append(_Doc(split, source[starts[split] : starts[split] + length], int(enc.doc_bytes[i])))
            self._held_tokens += length
            starts[split] += length
        while self._held and self._held_tokens - len(self._held[0].tokens) >= MIN_VAL_TOKENS:
            self._write_doc(self._held.popleft())

    def close(self) -> list[dict]:
        """Top the val split up (or fill an empty train split) from the held documents, write them; the manifest's
        shard list."""
        held = list(self._held)
        counts = {s: self.documents[s] + sum(d.split == s for d in held) for s in SPLITS}
        val_tokens = self.tokens["val"] + sum(len(d.tokens) for d in held if d.split == "val")
        total_tokens = sum(self.tokens.values()) + self._held_tokens
        target = min(MIN_VAL_TOKENS, math.ceil(MAX_VAL_SHARE * total_tokens))
        moved = []
        if self.val_fraction > 0 and sum(counts.values()) >= 2:
            if val_tokens < target:
                for doc in reversed(held):
                    if val_tokens >= target or (doc.split == "train" and counts["train"] == 1):
                        break
                    if doc.split == "train":
                        doc.split = "val"
                        counts["train"] -= 1
                        val_tokens += len(doc.tokens)
                        moved.append(doc)
            elif counts["train"] == 0:
                held[-1].split = "train"
                moved.append(held[-1])
        if moved:
            self.fallback = {"split": moved[0].split, "documents": len(moved),
                             "tokens": sum(len(d.tokens) for d in moved)}
        for doc in held:
            self._write_doc(doc)
        self._held.clear()
        self._held_tokens = 0
        return self.writers["train"].close() + self.writers["val"].close()

    def _write_head(self, enc: EncodedBatch, head: int) -> None:
        """Write the batch's first `head` documents: within a split they are a prefix of its arrays."""
        for split, mask, tokens, lengths in (("train", ~enc.is_val[:head], enc.train_tokens, enc.train_lengths),
                                             ("val", enc.is_val[:head], enc.val_tokens, enc.val_lengths)):
            k = int(mask.sum())
            if k:
                size = int(lengths[:k].sum())
                self._write(split, tokens[:size], lengths[:k], int(enc.doc_bytes[:head][mask].sum()))

    def _write_doc(self, doc: _Doc) -> None:
        self._held_tokens -= len(doc.tokens)
        self._write(doc.split, doc.tokens, np.array([len(doc.tokens)], dtype=np.int64), doc.nbytes)

    def _write(self, split: str, tokens: np.ndarray, lengths: np.ndarray, nbytes: int) -> None:
        self.writers[split].add(tokens, lengths)
        self.tokens[split] += len(tokens)
        self.bytes[split] += nbytes
        self.documents[split] += len(lengths)
