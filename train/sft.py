"""Supervised fine-tuning batches: conversations packed (or padded) into rows with masked targets.

    loader = ChatLoader(ChatDataset(dir), micro_batch_size=16, seq_len=256, seed=0)
    x, y, doc_ids = loader.next_batch()      # y == IGNORE_INDEX except on assistant tokens and their end-of-turn

Packing (the default) lays whole conversations back to back into rows of seq_len tokens, next-fit in a seeded
order per epoch; `doc_ids` keeps attention and RoPE positions inside each conversation (model/documents.py), so a
packed conversation gets exactly the loss it gets alone. Padding (pack=False) puts one conversation per row. A
conversation longer than seq_len is cut to its first seq_len tokens (counted in `truncated`). Position in the
endless stream of rows is (epoch, rows consumed), which resumes exactly. Rows are dealt to ranks as in
train/dataloader.py: row (b * micro_batch_size + j) * world_size + rank.

Packing keeps every row nearly full of real tokens, where padding spends most of each row on nothing (the
built-in corpus's conversations are ~40 tokens, rows 256): `benchmarks/sft_packing.py` measures both.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from core.errors import DataError
from data.chat_dataset import ChatDataset
from model.loss import IGNORE_INDEX

STATE_VERSION = 1
PAD_ID = 0  # token id of padding positions: attention never reads them (own document) and they have no target

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pack_rows(lengths: np.ndarray, order: np.ndarray, seq_len: int, pack: bool) -> list[list[int]]:
    """Rows of conversation indices: next-fit in `order` (each length cut to seq_len), or one per row."""
    if not pack:
        return [[int(i)] for i in order]
    rows, row, used = [], [], 0
    for i in order:
        n = min(int(lengths[i]), seq_len)
        if used + n > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append(int(i))
        used += n
    if row:
        rows.append(row)
    return rows


class ChatLoader:
    """Endless, deterministic, resumable (x, y, doc_ids) micro batches of shape (micro_batch_size, seq_len)."""

    def __init__(self, dataset: ChatDataset, micro_batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = True):
        if micro_batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"micro_batch_size and seq_len must be positive, got {micro_batch_size}, {seq_len}")
        self.dataset, self.micro_batch_size, self.seq_len, self.pack = dataset, micro_batch_size, seq_len, pack
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.rows_per_step = micro_batch_size * world_size
        self._lengths = {s: dataset.lengths(s) for s in ("train", "val")}
        if len(self._lengths["train"]) == 0:
            raise DataError(f"{dataset.directory} has no training conversations")
        self.truncated = {s: int((lengths > seq_len).sum()) for s, lengths in self._lengths.items()}
        self.epoch, self.consumed = 0, 0  # rows of this epoch consumed by all ranks
        self._epoch_rows: dict[int, list[list[int]]] = {}

    def _rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_rows:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            order = rng.permutation(len(self._lengths["train"]))
            self._epoch_rows = {e: r for e, r in self._epoch_rows.items() if e == epoch - 1}
            self._epoch_rows[epoch] = pack_rows(self._lengths["train"], order, self.seq_len, self.pack)
        return self._epoch_rows[epoch]

    def _row(self, split: str, conversations: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.full(self.seq_len, PAD_ID, dtype=np.int64)
        y = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        doc = np.arange(self.seq_len, dtype=np.int64) + len(conversations)  # padding: one document per position
        start = 0
        for k, i in enumerate(conversations):
            ids, targets = self.dataset.conversation(split, i)
            ids, targets = ids[: self.seq_len], targets[: self.seq_len]
            n = len(ids)
            x[start : start + n] = ids
            # Position t predicts token t + 1 of the same conversation, when that token is a target.
            y[start : start + n - 1] = np.where(targets[1:], ids[1:], IGNORE_INDEX)
            doc[start : start + n] = k
            start += n
        return x, y, doc

    def _batch(self, split: str, rows: list[list[int]]) -> Batch:
        x, y, doc = (torch.from_numpy(np.stack(a)) for a in zip(*(self._row(split, r) for r in rows), strict=True))
        return x, y, doc

    def next_batch(self) -> Batch:
        """This rank's next micro batch; a micro batch may span two epochs."""
        chosen = []
        for j in range(self.rows_per_step):
            rows = self._rows(self.epoch)
            if j % self.world_size == self.rank:
                chosen.append(rows[self.consumed])
            self.consumed += 1
            if self.consumed == len(rows):
                self.epoch, self.consumed = self.epoch + 1, 0
        return self._batch("train", chosen)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "consumed": self.consumed,
                "seq_len": self.seq_len, "pack": self.pack, "dataset": self.dataset.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where state_dict() was taken (the saved seed wins over the constructor's)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"chat loader state version {state.get('version')} is not {STATE_VERSION} (a "
                            "pretraining checkpoint? fine-tune from it with train.init_from instead)")
        if state["seq_len"] != self.seq_len or state["pack"] != self.pack:
            raise DataError(f"the saved loader position is for seq_len {state['seq_len']}, pack {state['pack']}; "
                            f"this run uses {self.seq_len}, {self.pack}: rows would not line up")
        if state["dataset"] != self.dataset.fingerprint:
            raise DataError(f"the saved loader position belongs to another dataset than {self.dataset.directory}")
        self.seed, self._epoch_rows = int(state["seed"]), {}
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def validation_batches(self, n_batches: int) -> Iterator[Batch]:
        """Up to n_batches micro batches of the held-out conversations, packed in order: the same every call."""
        rows = pack_rows(self._lengths["val"], np.arange(len(self._lengths["val"])), self.seq_len, self.pack)
        available = len(rows) // self.rows_per_step
        if available == 0:
            raise DataError(
                f"the val split of {self.dataset.directory} fills {len(rows)} row(s) of {self.seq_len} tokens, fewer "
                f"than one micro batch of {self.micro_batch_size} on each of {self.world_size} rank(s): raise "
                "data.val_fraction, or lower train.micro_batch_size"
            )
        for b in range(min(n_batches, available)):
            first = b * self.rows_per_step + self.rank
            yield self._batch("val", rows[first : first + self.rows_per_step : self.world_size])
