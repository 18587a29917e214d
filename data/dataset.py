"""A prepared token dataset (data/prepare_data.py) read through memory maps, and the check that a tokenizer and
a model fit it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import DataError
from data.shards import HEADER_BYTES, dtype_from_name, load_manifest, open_shard

SPLITS = ("train", "val")


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
