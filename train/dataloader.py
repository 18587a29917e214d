"""Training batches from a prepared token dataset (data/prepare_data.py), read through memory maps.

The train split is one long token stream cut into non-overlapping windows of seq_len + 1 tokens; x is a window's
first seq_len tokens and y the same shifted by one. Each epoch visits the windows in a permutation seeded by
(seed, epoch), and the epochs' permutations are read back to back as one endless stream (nothing is skipped at an
epoch's end; a micro batch may span two epochs). Micro batch b of rank r takes stream positions
(b * micro_batch_size + j) * world_size + r, so ranks never share a window, the windows of one optimizer step are
the same whatever the world size and micro batch size, and the position is a single count of windows consumed,
which resumes exactly, even across a change of world size or micro batch size when the count divides evenly.

With shift_windows, every epoch after the first moves the grid of windows by a seeded offset in [0, seq_len] and
reads the stream as a circle (the one window that passes its end continues at its start): over many epochs of
little data, a token meets new contexts and positions instead of the same window every time (nanoGPT samples
random offsets for the same reason). The first epoch is the same either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from core.errors import DataError
from data.dataset import TokenDataset
from model.documents import doc_ids_from_eos

STATE_VERSION = 1


class DataLoader:
    """Endless, deterministic, resumable (x, y) int64 batches of shape (micro_batch_size, seq_len) for one rank."""

    def __init__(self, dataset: TokenDataset, micro_batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, document_masking: bool = False, shift_windows: bool = False):
        if micro_batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"micro_batch_size and seq_len must be positive, got {micro_batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset, self.micro_batch_size, self.seq_len = dataset, micro_batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.document_masking, self.shift_windows = document_masking, shift_windows
        self.window = seq_len + 1
        self.n_windows = dataset.num_tokens("train") // self.window
        self.windows_per_step = micro_batch_size * world_size  # windows consumed by one micro batch on all ranks
        self.batches_per_epoch = self.n_windows // self.windows_per_step  # whole micro batches in one epoch
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the train split of {dataset.directory} has {dataset.num_tokens('train'):,} tokens, fewer than one "
                f"micro batch of {micro_batch_size} x {self.window} tokens on each of {world_size} rank(s)"
            )
        self.cursor = 0  # stream position of the next micro batch (windows consumed by all ranks, all epochs)
        self._perms: dict[int, np.ndarray] = {}
        self._offsets: dict[int, int] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}  # at most two epochs in memory
            self._perms[epoch] = rng.permutation(self.n_windows)
        return self._perms[epoch]

    def offset(self, epoch: int) -> int:
        """Where the grid of windows starts in `epoch`: 0, or with shift_windows after the first epoch a seeded
        offset in [0, window)."""
        if not self.shift_windows or epoch == 0:
            return 0
        if epoch not in self._offsets:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 1]))
            self._offsets = {epoch: int(rng.integers(self.window))}  # one epoch at a time is all a batch needs
        return self._offsets[epoch]

    def _window(self, split: str, start: int) -> np.ndarray:
        """The window at `start` of a split's stream, continuing at its beginning past its end (only shifted train
        windows get there; every document ends with EOS, so the seam is a document boundary, also for document
        masking)."""
        tail = self.dataset.num_tokens(split) - start
        if tail >= self.window:
            return self.dataset.read(split, start, self.window)
        return np.concatenate([self.dataset.read(split, start, tail), self.dataset.read(split, 0, self.window - tail)])

    def _batch(self, split: str, starts) -> tuple[torch.Tensor, ...]:
        rows = np.stack([self._window(split, int(s)) for s in starts])
        rows = torch.from_numpy(rows.astype(np.int64))
        x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        if self.document_masking:  # (x, y, doc_ids): attention stays inside each document of a window
            return x, y, doc_ids_from_eos(x, self.dataset.eos_id)
        return x, y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) micro batch of this rank; a new epoch starts with a new permutation."""
        positions = range(self.cursor + self.rank, self.cursor + self.windows_per_step, self.world_size)
        epochs = [p // self.n_windows for p in positions]
        self.cursor += self.windows_per_step
        return self._batch("train", [self.offset(e) + int(self._permutation(e)[p % self.n_windows]) * self.window
                                     for e, p in zip(epochs, positions, strict=True)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The position as plain ints and strings (torch.save / torch.load(weights_only=True) safe)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.cursor // self.n_windows,
            "consumed": self.cursor % self.n_windows,  # windows of this epoch's permutation used, all ranks
            "seq_len": self.seq_len,
            "n_windows": self.n_windows,
            "shift_windows": self.shift_windows,
            "dataset": self.dataset.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where state_dict() was taken (the saved seed and shift_windows win over the
        constructor's: a run keeps the windows it started with; a state from before shift_windows existed has it
        off)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        if state["seq_len"] != self.seq_len:
            raise DataError(f"the saved loader position is for seq_len {state['seq_len']}, this run uses "
                            f"{self.seq_len}: windows would not line up")
        if state["dataset"] != self.dataset.fingerprint or state["n_windows"] != self.n_windows:
            raise DataError(f"the saved loader position belongs to another dataset than {self.dataset.directory} "
                            "(it was rebuilt or changed since the checkpoint)")
        cursor = int(state["epoch"]) * self.n_windows + int(state["consumed"])
        if cursor % self.windows_per_step:
            raise DataError(f"the saved loader position ({state['consumed']} windows into epoch {state['epoch']}) "
                            f"is not a whole number of micro batches of {self.micro_batch_size} x "
                            f"{self.world_size} rank(s)")
        self.seed, self._perms, self._offsets, self.cursor = int(state["seed"]), {}, {}, cursor
        self.shift_windows = bool(state.get("shift_windows", False))

    def validation_batches(self, n_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same up to n_batches (x, y) validation micro batches every call; fewer if the val split is small.

        Windows are spread evenly over the whole val stream and dealt out like training windows, so ranks see
        disjoint windows and every rank gets the same number of batches. A val split smaller than one micro batch
        on every rank gives one smaller batch (as many windows per rank as there are), not an error."""
        n_val = self.dataset.num_tokens("val") // self.window
        per_rank = min(self.micro_batch_size, n_val // self.world_size)  # windows per rank per batch
        if per_rank == 0:
            raise DataError(
                f"the val split of {self.dataset.directory} has {self.dataset.num_tokens('val'):,} tokens, fewer "
                f"than one window of {self.window} tokens on each of {self.world_size} rank(s): raise "
                "data.val_fraction and rebuild, or lower train.seq_len"
            )
        step = per_rank * self.world_size
        total = min(n_batches, n_val // step) * step
        chosen = np.arange(total, dtype=np.int64) * n_val // total  # strictly increasing since total <= n_val
        for b in range(total // step):
            first = b * step + self.rank
            yield self._batch("val", chosen[first : first + step : self.world_size] * self.window)
