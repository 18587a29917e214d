"""Training batches from a prepared token dataset (data/prepare_data.py), read through memory maps.

The train split is one long token stream cut into non-overlapping windows of seq_len + 1 tokens; x is a window's
first seq_len tokens and y the same shifted by one. Each epoch visits the windows in a permutation seeded by
(seed, epoch), and the epochs' permutations are read back to back as one endless stream (nothing is skipped at an
epoch's end; a micro batch may span two epochs). Micro batch b of rank r takes stream positions
(b * micro_batch_size + j) * world_size + r, so ranks never share a window, the windows of one optimizer step are
the same whatever the world size and micro batch size, and the position is a single count of windows consumed,
which resumes exactly, even across a change of world size or micro batch size when the count divides evenly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError
from data.shards import HEADER_BYTES, dtype_from_name, load_manifest, open_shard

SPLITS = ("train", "val")
STATE_VERSION = 1


class TokenDataset:
    """A prepared dataset: its manifest and the memory-mapped token stream of each split."""

    def __init__(self, dataset_dir: str | Path):
        self.directory = Path(dataset_dir)
        self.manifest = load_manifest(self.directory)
        m = self.manifest
        self.dtype = dtype_from_name(m["dtype"])
        if m["header_bytes"] != HEADER_BYTES:
            raise DataError(f"{self.directory}: manifest header_bytes {m['header_bytes']} != {HEADER_BYTES}")
        self._shards: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for entry in m["shards"]:
            path = self.directory / entry["file"]
            if not path.is_file():
                raise DataError(f"{self.directory}: shard {entry['file']} listed in the manifest is missing")
            tokens = open_shard(path)
            if tokens.dtype != self.dtype or len(tokens) != entry["tokens"]:
                raise DataError(f"shard {path} holds {len(tokens)} {tokens.dtype} tokens; the manifest says "
                                f"{entry['tokens']} {self.dtype}")
            self._shards[entry["split"]].append(tokens)
        # starts[split][i] is the stream offset of shard i; the last entry is the split's length
        self._starts = {s: np.cumsum([0] + [len(t) for t in self._shards[s]]) for s in SPLITS}

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.manifest["tokenizer"]["hash"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def num_tokens(self, split: str = "train") -> int:
        """Tokens in a split (one EOS per document included)."""
        return int(self._starts[_check_split(split)][-1])

    def bytes_per_token(self, split: str = "train") -> float:
        """UTF-8 bytes of source text per token in a split (the whole dataset's ratio if the split is empty);
        bits per byte = loss in nats / ln 2 / bytes_per_token."""
        value = self.manifest["bytes_per_token"][_check_split(split)]
        return float(value if value is not None else self.manifest["bytes_per_token"]["total"])

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of a split's stream (a copy; may span shards)."""
        starts, shards = self._starts[_check_split(split)], self._shards[split]
        if start < 0 or start + length > starts[-1]:
            raise IndexError(f"tokens [{start}, {start + length}) outside the {split} split of {starts[-1]} tokens")
        i = int(np.searchsorted(starts, start, side="right")) - 1
        parts = []
        while length > 0:
            lo = start - int(starts[i])
            piece = shards[i][lo : lo + length]
            parts.append(piece)
            start += len(piece)
            length -= len(piece)
            i += 1
        return np.concatenate(parts) if len(parts) != 1 else np.array(parts[0])


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_compatible(dataset: TokenDataset, tokenizer, model_vocab_size: int) -> None:
    """DataError unless the dataset was tokenized with this tokenizer (hash, vocab size, EOS) and the model's
    embedding covers every id (model_vocab_size >= tokenizer vocab size). tokenizer may be None (skips it)."""
    where = dataset.directory
    if tokenizer is not None:
        if tokenizer.content_hash != dataset.tokenizer_hash:
            raise DataError(
                f"{where} was tokenized with tokenizer {dataset.tokenizer_hash[:12]}, but the tokenizer in use "
                f"({tokenizer.directory}) is {tokenizer.content_hash[:12]}: rebuild the dataset with "
                "data/prepare_data.py --force, or point data.tokenizer_dir at the tokenizer it was built with"
            )
        if tokenizer.vocab_size != dataset.vocab_size or tokenizer.eos_id != dataset.eos_id:
            raise DataError(f"{where}: tokenizer vocab/eos {tokenizer.vocab_size}/{tokenizer.eos_id} differ from "
                            f"the manifest's {dataset.vocab_size}/{dataset.eos_id}")
    if model_vocab_size < dataset.vocab_size:
        raise DataError(f"model.vocab_size ({model_vocab_size}) is smaller than the vocabulary of {where} "
                        f"({dataset.vocab_size}): token ids would overflow the embedding")


class DataLoader:
    """Endless, deterministic, resumable (x, y) int64 batches of shape (micro_batch_size, seq_len) for one rank."""

    def __init__(self, dataset: TokenDataset, micro_batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if micro_batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"micro_batch_size and seq_len must be positive, got {micro_batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset, self.micro_batch_size, self.seq_len = dataset, micro_batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
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

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}  # at most two epochs in memory
            self._perms[epoch] = rng.permutation(self.n_windows)
        return self._perms[epoch]

    def _batch(self, split: str, window_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.dataset.read(split, int(w) * self.window, self.window) for w in window_ids])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) micro batch of this rank; a new epoch starts with a new permutation."""
        positions = range(self.cursor + self.rank, self.cursor + self.windows_per_step, self.world_size)
        ids = np.array([self._permutation(p // self.n_windows)[p % self.n_windows] for p in positions])
        self.cursor += self.windows_per_step
        return self._batch("train", ids)

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
            "dataset": self.dataset.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where state_dict() was taken (the saved seed wins over the constructor's)."""
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
        self.seed, self._perms, self.cursor = int(state["seed"]), {}, cursor

    def validation_batches(self, n_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same up to n_batches (x, y) validation micro batches every call; fewer if the val split is small.

        Windows are spread evenly over the whole val stream and dealt out like training windows, so ranks see
        disjoint windows and every rank gets the same number of batches."""
        n_val = self.dataset.num_tokens("val") // self.window
        available = n_val // self.windows_per_step
        if available == 0:
            raise DataError(
                f"the val split of {self.dataset.directory} has {self.dataset.num_tokens('val'):,} tokens, fewer "
                f"than one micro batch of {self.micro_batch_size} x {self.window} tokens on each of "
                f"{self.world_size} rank(s): raise data.val_fraction and rebuild, or lower seq_len"
            )
        total = min(n_batches, available) * self.windows_per_step
        chosen = np.arange(total, dtype=np.int64) * n_val // total  # strictly increasing since total <= n_val
        for b in range(total // self.windows_per_step):
            first = b * self.windows_per_step + self.rank
            yield self._batch("val", chosen[first : first + self.windows_per_step : self.world_size])
