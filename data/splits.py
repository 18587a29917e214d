"""Route encoded documents to the train and val shard writers, in source order, so that neither split ends empty.

Each document (or piece of a cut document, see data/pieces.py) goes to the split its content hash chooses
(data/encode.py). On a small corpus that can leave a split empty: one 1 MB novel in 128 pieces with
val_fraction 0.005 has no validation piece 53% of the time. So the latest document is held back until the next one
arrives, and the last document of the corpus moves to the other split when that split would otherwise be empty
(val only when val_fraction > 0, and only when the corpus has at least 2 documents). Holding one document back
keeps each split in source order and the result independent of the worker count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.encode import EncodedBatch
from data.shards import SplitWriter

SPLITS = ("train", "val")
FALLBACK_RULE = ("when val_fraction > 0 and a split would be empty, the corpus's last document (or piece) moves "
                 "to it, if the corpus has at least 2")


class SplitSink:
    """Writes EncodedBatches into `{split}_NNNNNN.bin` shards and counts tokens, bytes and documents per split."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, val_fraction: float):
        self.writers = {split: SplitWriter(directory, split, dtype, shard_tokens) for split in SPLITS}
        self.val_fraction = val_fraction
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.fallback: str | None = None  # the split the last document was moved to, if any
        self._held: tuple[str, np.ndarray, np.ndarray, int] | None = None  # split, tokens, lengths, bytes

    def add(self, enc: EncodedBatch) -> None:
        """Write a batch's documents, except its last one, which is held until the next batch (or close())."""
        parts = {"train": (enc.train_tokens, enc.train_lengths, enc.train_bytes),
                 "val": (enc.val_tokens, enc.val_lengths, enc.val_bytes)}
        last = "val" if enc.last_is_val else "train"
        tokens, lengths, nbytes = parts[last]
        n = int(lengths[-1])
        parts[last] = (tokens[: len(tokens) - n], lengths[:-1], nbytes - enc.last_bytes)
        if self._held is not None:
            self._write(*self._held)
        for split in SPLITS:
            self._write(split, *parts[split])
        self._held = (last, tokens[len(tokens) - n :], lengths[-1:], enc.last_bytes)

    def close(self) -> list[dict]:
        """Write the held document (to the other split if that one is still empty); the manifest's shard list."""
        if self._held is not None:
            split = self._held[0]
            other = "val" if split == "train" else "train"
            if self.val_fraction > 0 and self.documents[other] == 0 and self.documents[split] > 0:
                split = self.fallback = other
            self._write(split, *self._held[1:])
            self._held = None
        return self.writers["train"].close() + self.writers["val"].close()

    def _write(self, split: str, tokens: np.ndarray, lengths: np.ndarray, nbytes: int) -> None:
        if len(lengths):
            self.writers[split].add(tokens, lengths)
        self.tokens[split] += len(tokens)
        self.bytes[split] += nbytes
        self.documents[split] += len(lengths)
