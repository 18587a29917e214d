"""Token shard files: a 32-byte header followed by the raw little-endian token ids (format in data/README.md)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from core.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "mini-llm-tokens"
MAGIC = b"MLLMTOK\0"
VERSION = 1
# magic, format version, bytes per token (2 or 4), token count, reserved (0)
HEADER = struct.Struct("<8sIIQQ")
HEADER_BYTES = HEADER.size  # 32: keeps the token array 4- and 8-byte aligned for memory mapping


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 2**16:
        return np.dtype("<u2")
    if vocab_size <= 2**32:
        return np.dtype("<u4")
    raise DataError(f"vocab_size {vocab_size} does not fit in 32-bit token ids")


def dtype_from_name(name: str) -> np.dtype:
    """Parse a manifest dtype name ('uint16' or 'uint32')."""
    if name not in ("uint16", "uint32"):
        raise DataError(f"unsupported token dtype {name!r}: expected uint16 or uint32")
    return np.dtype(name).newbyteorder("<")


def pack_header(dtype: np.dtype, n_tokens: int) -> bytes:
    """The 32 header bytes of a shard holding n_tokens tokens of dtype."""
    return HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, n_tokens, 0)


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """(dtype, token count) of a shard; DataError if the header is not ours or disagrees with the file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"shard {path} is truncated: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, n_tokens, _ = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path} is not a token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DataError(f"shard {path} has format version {version}; this code reads version {VERSION}")
    if itemsize not in (2, 4):
        raise DataError(f"shard {path} has {itemsize} bytes per token; expected 2 or 4")
    if size != HEADER_BYTES + n_tokens * itemsize:
        raise DataError(f"shard {path} is {size} bytes; its header promises {HEADER_BYTES + n_tokens * itemsize}")
    return np.dtype(f"<u{itemsize}"), n_tokens


def open_shard(path: str | Path) -> np.ndarray:
    """Memory-map a shard's tokens (read-only; nothing is read into RAM until indexed)."""
    dtype, n_tokens = read_header(path)
    if n_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def load_manifest(dataset_dir: str | Path) -> dict:
    """The parsed manifest.json of a prepared dataset; DataError if it is missing or unreadable."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{dataset_dir} is not a prepared dataset: {path} does not exist "
                        "(run data/prepare_data.py)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a mini-llm token dataset manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path} has format version {manifest.get('version')}; this code reads version {VERSION}")
    return manifest


class SplitWriter:
    """Append whole documents to `{split}_NNNNNN.bin` shards, starting a new shard once one holds shard_tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = Path(directory), split, shard_tokens
        self.dtype = np.dtype(dtype)
        self.shards: list[dict] = []  # manifest entries of the closed shards
        self._file = None
        self._tokens = self._documents = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one concatenated token array and the length of each document."""
        ends = np.cumsum(lengths)
        start_doc, start_tok = 0, 0
        while start_doc < len(lengths):
            if self._file is None:
                self._open()
            # Documents stay whole: take documents up to (and including) the one that fills this shard.
            room = self.shard_tokens - self._tokens
            stop = min(start_doc + int(np.searchsorted(ends[start_doc:] - start_tok, room)) + 1, len(lengths))
            stop_tok = int(ends[stop - 1])
            self._file.write(np.ascontiguousarray(tokens[start_tok:stop_tok], dtype=self.dtype).tobytes())
            self._tokens += stop_tok - start_tok
            self._documents += stop - start_doc
            if self._tokens >= self.shard_tokens:
                self._close()
            start_doc, start_tok = stop, stop_tok

    def close(self) -> list[dict]:
        """Finish the open shard; returns the manifest entries of all shards written."""
        if self._file is not None:
            self._close()
        return self.shards

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 -- closed in _close()
        self._file.write(pack_header(self.dtype, 0))  # the real count is written when the shard is closed
        self._tokens = self._documents = 0

    def _close(self) -> None:
        self._file.seek(0)
        self._file.write(pack_header(self.dtype, self._tokens))
        self._file.close()
        name = Path(self._file.name).name
        self.shards.append({"file": name, "split": self.split, "tokens": self._tokens, "documents": self._documents})
        self._file = None
