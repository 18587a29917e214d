"""A prepared conversation dataset for supervised fine-tuning: token ids and target masks, split by topic.

    prepare_chat_dataset(["builtin:python-stdlib-chat"], "out/datasets/chat", tokenizer, val_fraction=0.1)
    ds = ChatDataset("out/datasets/chat"); ids, targets = ds.conversation("val", 0)

Every conversation is rendered by the tokenizer's chat template (Tokenizer/chat.py, the one definition of the
format) into ids and a target mask that is True exactly on assistant tokens and their <|end_of_turn|>. The
validation split holds out whole topics (a topic is val when blake2b(topic) < val_fraction * 2**64; a conversation
without a topic is its own topic, keyed by its text), so validation asks about things the fine-tuning never saw.

Layout of the directory (written atomically; rebuilt only when its inputs change):
    manifest.json                    kind "chat", inputs and fingerprint, counts and topics per split
    {split}_ids.npy                  all conversations' ids back to back (uint16, or uint32 over 65,536 ids)
    {split}_targets.npy              uint8 target mask, aligned with the ids
    {split}_offsets.npy              int64, conversation i is [offsets[i], offsets[i + 1])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.atomic import atomic_directory, remove_stale_temporaries, write_text_atomic
from core.errors import DataError
from core.paths import check_dir_path
from core.sources import describe_sources
from data.conversations import iter_conversations, resolve_chat_sources
from data.shards import MANIFEST, token_dtype
from Tokenizer import TextTokenizer
from Tokenizer.chat import ChatFormatError, encode_chat_for_training

KIND = "chat"
VERSION = 1
SPLITS = ("train", "val")
SPLIT_RULE = ("whole topics: a conversation is val when blake2b(utf8 topic, digest_size=8) as little-endian uint64 < "
              "val_fraction * 2**64; without a topic, its messages' JSON is the topic")


def held_out(topic: str, val_fraction: float) -> bool:
    """Whether a topic belongs to the validation split."""
    digest = hashlib.blake2b(topic.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def chat_inputs(sources: list[str], tokenizer: TextTokenizer, val_fraction: float) -> dict:
    """Everything the dataset depends on; its hash is the fingerprint a training run checks."""
    resolved = resolve_chat_sources(sources)
    return {"kind": KIND, "version": VERSION, "sources": describe_sources(resolved),
            "tokenizer": tokenizer.content_hash, "vocab_size": tokenizer.vocab_size,
            "val_fraction": float(val_fraction), "split_rule": SPLIT_RULE}


def _fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def prepare_chat_dataset(sources: list[str], out_dir: str | Path, tokenizer: TextTokenizer, val_fraction: float,
                         info: Callable[[str], None] = print, flag: str = "data.dataset_dir") -> Path:
    """Encode the conversations of `sources` into out_dir, unless it already holds them (same inputs). A directory
    holding anything else is an error naming `flag`; a malformed row names its file, line and field."""
    out = Path(out_dir)
    check_dir_path(out, flag, DataError)
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    inputs = chat_inputs(sources, tokenizer, val_fraction)
    fingerprint = _fingerprint(inputs)
    if out.exists():
        manifest = _read_manifest(out) if (out / MANIFEST).is_file() else None
        if manifest is not None and manifest.get("fingerprint") == fingerprint:
            return out
        if manifest is None and any(out.iterdir()):
            raise DataError(f"{flag} {out} exists and is not a conversation dataset; choose another directory")
        if manifest is not None:
            raise DataError(f"{flag} {out} holds a conversation dataset built from other sources, tokenizer or "
                            "val_fraction; choose another directory or remove it")
    info(f"preparing conversation dataset {out} from {', '.join(sources)}")
    remove_stale_temporaries(out.parent)
    dtype = token_dtype(tokenizer.vocab_size)
    parts = {s: {"ids": [], "targets": [], "lengths": [], "topics": set()} for s in SPLITS}
    for conv in iter_conversations(resolve_chat_sources(sources)):
        try:
            ids, targets = encode_chat_for_training(tokenizer, list(conv.messages))
        except ChatFormatError as e:
            raise DataError(f"{conv.where}: {e}") from None
        topic = conv.topic if conv.topic is not None else json.dumps(conv.messages, sort_keys=True)
        split = parts["val" if held_out(topic, val_fraction) else "train"]
        split["ids"].append(np.asarray(ids, dtype=dtype))
        split["targets"].append(np.asarray(targets, dtype=np.uint8))
        split["lengths"].append(len(ids))
        if conv.topic is not None:
            split["topics"].add(conv.topic)
    if not parts["train"]["lengths"]:
        raise DataError(f"data.sources: no training conversations in {', '.join(sources)} (all held out or empty)")
    manifest = {"kind": KIND, "version": VERSION, "fingerprint": fingerprint, "inputs": inputs, "dtype": dtype.name,
                "vocab_size": tokenizer.vocab_size, "tokenizer": {"hash": tokenizer.content_hash}, "splits": {}}
    with atomic_directory(out) as tmp:
        for name, part in parts.items():
            lengths = np.asarray(part["lengths"], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            empty = np.zeros(0, dtype=dtype)
            ids = np.concatenate(part["ids"]) if part["ids"] else empty
            targets = np.concatenate(part["targets"]) if part["targets"] else np.zeros(0, dtype=np.uint8)
            np.save(tmp / f"{name}_ids.npy", ids)
            np.save(tmp / f"{name}_targets.npy", targets)
            np.save(tmp / f"{name}_offsets.npy", offsets)
            manifest["splits"][name] = {"conversations": len(lengths), "tokens": int(offsets[-1]),
                                        "targets": int(targets.sum()), "topics": sorted(part["topics"])}
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    counts = {s: manifest["splits"][s]["conversations"] for s in SPLITS}
    info(f"conversations: {counts['train']:,} train, {counts['val']:,} val "
         f"({len(manifest['splits']['val']['topics'])} held-out topics)")
    return out


def _read_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {directory / MANIFEST}: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{directory / MANIFEST} is not a JSON object")
    return manifest


def is_chat_dataset(directory: str | Path) -> bool:
    path = Path(directory) / MANIFEST
    return path.is_file() and _read_manifest(Path(directory)).get("kind") == KIND


class ChatDataset:
    """A prepared conversation dataset, read through memory maps."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not (self.directory / MANIFEST).is_file():
            raise DataError(f"{self.directory} is not a prepared conversation dataset (no {MANIFEST})")
        self.manifest = _read_manifest(self.directory)
        if self.manifest.get("kind") != KIND or self.manifest.get("version") != VERSION:
            raise DataError(f"{self.directory} is not a version-{VERSION} conversation dataset")
        self._arrays = {}
        for split in SPLITS:
            try:
                arrays = {k: np.load(self.directory / f"{split}_{k}.npy", mmap_mode="r")
                          for k in ("ids", "targets", "offsets")}
            except (OSError, ValueError) as e:
                raise DataError(f"{self.directory}: cannot read the {split} split: {e}") from None
            if len(arrays["ids"]) != len(arrays["targets"]) or arrays["offsets"][-1] != len(arrays["ids"]):
                raise DataError(f"{self.directory}: the {split} split's arrays disagree in length")
            self._arrays[split] = arrays

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.manifest["tokenizer"]["hash"])

    def num_conversations(self, split: str) -> int:
        return len(self._arrays[split]["offsets"]) - 1

    def lengths(self, split: str) -> np.ndarray:
        return np.diff(self._arrays[split]["offsets"])

    def conversation(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, targets bool) of conversation i of a split."""
        a = self._arrays[split]
        lo, hi = int(a["offsets"][i]), int(a["offsets"][i + 1])
        return a["ids"][lo:hi].astype(np.int64), a["targets"][lo:hi].astype(bool)


def check_chat_compatible(dataset: ChatDataset, tokenizer: TextTokenizer, model_vocab_size: int) -> None:
    """DataError unless the dataset was encoded with this tokenizer and the model's embedding covers every id."""
    if tokenizer.content_hash != dataset.tokenizer_hash:
        raise DataError(f"{dataset.directory} was encoded with tokenizer {dataset.tokenizer_hash[:12]}, but the "
                        f"tokenizer in use ({tokenizer.directory}) is {tokenizer.content_hash[:12]}")
    if model_vocab_size < dataset.vocab_size:
        raise DataError(f"model.vocab_size ({model_vocab_size}) is smaller than the tokenizer's {dataset.vocab_size} "
                        f"ids of {dataset.directory}: set model.vocab_size={dataset.vocab_size}")
