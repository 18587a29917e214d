"""The project's tokenizer: a byte-fallback SentencePiece BPE model stored as DIR/tokenizer.model.

Text round-trips exactly: decode(encode(x)) == x for every string that can be UTF-8 encoded. Two details make
that true. The model is trained with identity normalization, no dummy prefix and no whitespace folding (see
train_tokenizer.py). And SentencePiece writes a space as U+2581 ("▁") inside pieces, so a literal U+2581 in the
text would come back as a space; encode() therefore spells a literal U+2581 as its three UTF-8 byte tokens,
which decode to U+2581 itself. The Hugging Face export (hf_export.py) reproduces both rules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from core.errors import DataError
from Tokenizer.base import CHAT_TEMPLATE_FILE as CHAT_TEMPLATE_FILE  # the chat template, beside tokenizer.model

MODEL_FILE = "tokenizer.model"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
# Chat markers: SentencePiece control symbols, which encode() never produces (the string "<|user|>" in a text is
# text, spelled with ordinary pieces); only the chat template inserts their ids. End of turn is its own id, apart
# from the end-of-document EOS of pretraining.
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end_of_turn|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)
ADD_CHAT_TOKENS_HINT = "add them with `python scripts/add_chat_tokens.py --checkpoint CKPT --out NEW_CKPT`"
SPACE_MARKER = "\u2581"  # SentencePiece's escaped space
CHUNK_CHARS = 512  # long texts are encoded in pieces of about this many characters (see Tokenizer._chunks)
_WORD_START = re.compile(r"(?<=[^ ]) ")  # a space after a non-space: where a new word starts


def pieces_never_cross_word_starts(processor: spm.SentencePieceProcessor) -> bool:
    """True when no piece holds a space after a non-space character (what training with split_by_whitespace
    guarantees); then cutting text before such a space never changes its encoding."""
    for i in range(processor.get_piece_size()):
        if processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i):
            continue
        if SPACE_MARKER in processor.id_to_piece(i).lstrip(SPACE_MARKER):
            return False
    return True


class Tokenizer:
    """Encode text to token ids and back with a SentencePiece model; build one with Tokenizer.load(directory)."""

    def __init__(self, directory: Path, model_bytes: bytes, processor: spm.SentencePieceProcessor):
        self._directory = directory
        self._sp = processor
        self._content_hash = hashlib.sha256(model_bytes).hexdigest()
        # A literal U+2581 is encoded as its UTF-8 bytes, so it cannot be confused with an escaped space.
        self._marker_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARKER.encode()]
        self._cut_at_word_starts = pieces_never_cross_word_starts(processor)
        found = {piece: processor.piece_to_id(piece) for piece in CHAT_TOKENS}
        self._chat_ids = found if all(processor.is_control(i) for i in found.values()) else None

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load DIR/tokenizer.model; raises DataError naming the path when it is missing or not a usable model."""
        directory = Path(directory)
        path = directory / MODEL_FILE
        if not path.is_file():
            hint = "; pass the directory that holds it" if directory.is_file() else ""
            raise DataError(f"no tokenizer in {directory}: {path} does not exist{hint}")
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
        if len(text) <= CHUNK_CHARS and SPACE_MARKER not in text:  # the common short case, straight through
            return self._sp.encode(text, add_bos=bos, add_eos=eos)
        return self.encode_batch([text], bos, eos)[0]

    def encode_batch(
        self, texts: list[str], bos: bool = False, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """encode() for many texts at once, on `num_threads` threads (-1: all cores)."""
        parts = [self._split(text) for text in texts]
        encoded = iter(self._sp.encode([p for ps in parts for p in ps if p is not None], num_threads=num_threads))
        out = []
        for ps in parts:
            ids = [BOS_ID] if bos else []
            for p in ps:
                ids += self._marker_ids if p is None else next(encoded)
            if eos:
                ids.append(EOS_ID)
            out.append(ids)
        return out

    def _split(self, text: str) -> list[str | None]:
        """Cut `text` into parts that encode independently to the same ids; None stands for a literal U+2581."""
        if SPACE_MARKER not in text:
            return self._chunks(text)
        out: list[str | None] = []
        for i, segment in enumerate(text.split(SPACE_MARKER)):
            if i:
                out.append(None)
            out += self._chunks(segment)
        return out

    def _chunks(self, text: str) -> list[str]:
        # SentencePiece BPE gets slower per byte as a text grows (several times slower on a 2 MB text than on
        # 200-byte ones), so long texts are cut at word starts, which no piece crosses: the ids do not change.
        if len(text) <= CHUNK_CHARS or not self._cut_at_word_starts:
            return [text]
        chunks, start = [], 0
        while len(text) - start > CHUNK_CHARS:
            cut = _WORD_START.search(text, start + CHUNK_CHARS)
            if cut is None:
                break
            chunks.append(text[start : cut.start()])
            start = cut.start()
        chunks.append(text[start:])
        return chunks

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (lists, tuples, numpy arrays and 1-D tensors all work); BOS/EOS/PAD decode
        to nothing."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # SentencePiece wants plain ints
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """Id of a piece; None when it is not in the vocabulary."""
        token_id = self._sp.piece_to_id(token)
        return None if token_id == UNK_ID and token != self._sp.id_to_piece(UNK_ID) else token_id

    def id_to_token(self, token_id: int) -> str | None:
        """Piece of an id; None when out of range."""
        return self._sp.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None

    @property
    def add_bos(self) -> bool:
        """False: documents are not prefixed with BOS (they end with EOS), in training and in generation."""
        return False

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
    def has_chat_tokens(self) -> bool:
        """True when the model holds the chat markers (CHAT_TOKENS) as control symbols."""
        return self._chat_ids is not None

    @property
    def chat_token_ids(self) -> dict[str, int]:
        """Id of every chat marker (CHAT_TOKENS); a DataError saying how to add them when the model has none."""
        if self._chat_ids is None:
            raise DataError(f"tokenizer {self._directory} has no chat tokens ({', '.join(CHAT_TOKENS)}); "
                            f"{ADD_CHAT_TOKENS_HINT}, then fine-tune on conversations")
        return dict(self._chat_ids)

    @property
    def end_of_turn_id(self) -> int:
        """Id of <|end_of_turn|>, which closes every chat message (distinct from the end-of-document eos_id)."""
        return self.chat_token_ids[END_OF_TURN]

    def role_id(self, role: str) -> int:
        """Id of the marker that opens a message of `role` ("system", "user" or "assistant")."""
        return self.chat_token_ids[ROLE_TOKENS[role]]

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
