"""The project's tokenizer: a byte-fallback SentencePiece BPE model stored as DIR/tokenizer.model.

Text round-trips exactly: decode(encode(x)) == x for every string that can be UTF-8 encoded. Two details make
that true. The model is trained with identity normalization, no dummy prefix and no whitespace folding (see
train_tokenizer.py). And SentencePiece writes a space as U+2581 ("▁") inside pieces, so a literal U+2581 in the
text would come back as a space; encode() therefore spells a literal U+2581 as its three UTF-8 byte tokens,
which decode to U+2581 itself. The Hugging Face export (hf_export.py) reproduces both rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from train.errors import DataError

MODEL_FILE = "tokenizer.model"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPACE_MARKER = "\u2581"  # SentencePiece's escaped space


class Tokenizer:
    """Encode text to token ids and back with a SentencePiece model; build one with Tokenizer.load(directory)."""

    def __init__(self, directory: Path, model_bytes: bytes, processor: spm.SentencePieceProcessor):
        self._directory = directory
        self._sp = processor
        self._content_hash = hashlib.sha256(model_bytes).hexdigest()
        # A literal U+2581 is encoded as its UTF-8 bytes, so it cannot be confused with an escaped space.
        self._marker_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARKER.encode()]

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load DIR/tokenizer.model; raises DataError naming the path when it is missing or not a usable model."""
        directory = Path(directory)
        path = directory / MODEL_FILE
        if not path.is_file():
            raise DataError(f"no tokenizer in {directory}: {path} does not exist")
        try:
            model_bytes = path.read_bytes()
            processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        except (OSError, RuntimeError) as e:
            raise DataError(f"cannot read tokenizer {path}: {e}") from None
        found = (processor.unk_id(), processor.bos_id(), processor.eos_id(), processor.pad_id())
        if found != (UNK_ID, BOS_ID, EOS_ID, PAD_ID):
            raise DataError(
                f"tokenizer {path} has special ids unk, bos, eos, pad = {found}; expected "
                f"{(UNK_ID, BOS_ID, EOS_ID, PAD_ID)} (train one with Tokenizer/train_tokenizer.py)"
            )
        if not all(processor.is_byte(processor.piece_to_id(f"<0x{b:02X}>")) for b in range(256)):
            raise DataError(f"tokenizer {path} has no byte pieces; train one with Tokenizer/train_tokenizer.py")
        return cls(directory, model_bytes, processor)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally with BOS first and EOS last."""
        if SPACE_MARKER in text:
            return self._encode_with_marker(text, bos, eos)
        return self._sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: list[str], bos: bool = False, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """encode() for many texts at once, on `num_threads` threads (-1: all cores)."""
        out = self._sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)
        for i, text in enumerate(texts):
            if SPACE_MARKER in text:  # rare; redo those few on the exact path
                out[i] = self._encode_with_marker(text, bos, eos)
        return out

    def _encode_with_marker(self, text: str, bos: bool, eos: bool) -> list[int]:
        ids = [BOS_ID] if bos else []
        for i, part in enumerate(self._sp.encode(text.split(SPACE_MARKER))):
            if i:
                ids += self._marker_ids
            ids += part
        if eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (lists, tuples, numpy arrays and 1-D tensors all work); BOS/EOS/PAD decode
        to nothing."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # SentencePiece wants plain ints
        return self._sp.decode(ids)

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id (1); not used in training, documents end with eos_id."""
        return BOS_ID

    @property
    def eos_id(self) -> int:
        """End-of-sequence id (2), appended to every training document."""
        return EOS_ID

    @property
    def pad_id(self) -> int:
        """Padding id (3)."""
        return PAD_ID

    @property
    def unk_id(self) -> int:
        """Unknown-piece id (0); never produced by encode() thanks to byte fallback."""
        return UNK_ID

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials and byte pieces included."""
        return self._sp.get_piece_size()

    @property
    def directory(self) -> Path:
        """The directory the model was loaded from."""
        return self._directory

    @property
    def content_hash(self) -> str:
        """sha256 hex digest of the tokenizer.model bytes; identifies the tokenizer in dataset manifests."""
        return self._content_hash

    def __repr__(self) -> str:
        return f"Tokenizer({str(self._directory)!r}, vocab_size={self.vocab_size}, hash={self._content_hash[:12]})"
