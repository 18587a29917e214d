"""The tokenizer as GGUF metadata for llama.cpp's SentencePiece tokenizer ("llama" model), with the same ids.

llama.cpp re-implements SentencePiece BPE (llm_tokenizer_spm: split into characters, merge the adjacent pair
whose concatenation is the highest-scoring vocabulary entry, leftmost first on ties, bytes for what is left), so
the pieces, scores and types below reproduce Tokenizer.encode() exactly, given what the model was trained with
(train_tokenizer.py): BPE, identity normalization, no dummy prefix (add_space_prefix = false), spaces kept.
No BOS or EOS is added (add_bos_token = add_eos_token = false), as in encode() and run_inference.py.

What llama.cpp cannot express, and how it is handled:
- A literal U+2581 in the text. llama.cpp writes every space as U+2581 before merging, so it reads a literal
  U+2581 as a space; encode() spells it with its three byte tokens. GGUF has no switch for this: in llama.cpp a
  text tokenizes as if each U+2581 in it were a space. Documented (README); only texts holding U+2581 differ.
- Merges into non-normal entries. SentencePiece merges only into normal pieces; llama.cpp merges into any
  vocabulary entry, so with a piece "<s" the literal text "<s>" can become the BOS token. train_tokenizer.py
  never makes such pieces (its pieces never mix letters with punctuation, nor digits with anything), but a
  tokenizer trained otherwise may have them: merge_hazards() lists the texts at risk and the exporter names them.
  Only texts containing one of them can differ.
- Anything else (other normalizations, a dummy prefix, whitespace folding, unigram models, user-defined
  pieces) would tokenize differently in general and is refused with a DataError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType
from sentencepiece import sentencepiece_model_pb2

from core.errors import DataError
from Tokenizer.tokenizer import BOS_ID, EOS_ID, MODEL_FILE, PAD_ID, SPACE_MARKER, UNK_ID, Tokenizer

# SentencePiece piece types -> GGUF token types (the numbering differs: SentencePiece has no UNDEFINED).
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
_TYPES = {
    _PIECE.NORMAL: TokenType.NORMAL,
    _PIECE.UNKNOWN: TokenType.UNKNOWN,
    _PIECE.CONTROL: TokenType.CONTROL,
    _PIECE.BYTE: TokenType.BYTE,
}
PADDING_SCORE = -10000.0  # score of the unused entries that pad the vocabulary up to the model's rows


@dataclass
class GGUFVocab:
    """tokenizer.ggml.* values: one entry per model row (rows the tokenizer lacks are unused padding)."""

    tokens: list[bytes]
    scores: list[float]
    types: list[TokenType]
    padding: list[int]  # ids of the padding entries (model rows the tokenizer never produces)
    hazards: list[str]  # texts llama.cpp may tokenize differently (see merge_hazards)
    unk_id: int = UNK_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID


def _read_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _check_expressible(proto: sentencepiece_model_pb2.ModelProto, path: Path) -> None:
    """Refuse the settings llama.cpp's SentencePiece tokenizer does not reproduce."""
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != trainer.BPE:
        problems.append(f"model_type is {trainer.ModelType.Name(trainer.model_type)} (llama.cpp merges like BPE)")
    if norm.name != "identity" or norm.precompiled_charsmap:
        problems.append(f"normalization is {norm.name!r} (llama.cpp does not normalize)")
    if not norm.escape_whitespaces:
        problems.append("escape_whitespaces is off (llama.cpp always writes spaces as U+2581)")
    if norm.add_dummy_prefix:
        problems.append("add_dummy_prefix is on")
    if norm.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on (llama.cpp keeps every space)")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix is on")
    kinds = {_PIECE.USER_DEFINED: "user-defined", _PIECE.UNUSED: "unused"}
    for i, piece in enumerate(proto.pieces):
        if piece.type in kinds:
            problems.append(f"piece {i} {piece.piece!r} is {kinds[piece.type]}")
            break
    if problems:
        raise DataError(f"tokenizer {path} cannot be written to GGUF with identical tokenization: "
                        + "; ".join(problems))


def merge_hazards(tokens: list[bytes], types: list[TokenType]) -> list[str]:
    """Texts of non-normal entries that llama.cpp could build by merging two pieces, where SentencePiece never
    would (it merges into normal pieces only); only a text containing one of them can tokenize differently.

    llama.cpp's symbols are single characters or merged vocabulary entries, so an entry is at risk when its text
    splits into two parts that are each a character or an entry (a conservative test: it may list a text that
    the merge order never actually reaches)."""
    texts = {t.decode("utf-8") for t in tokens}
    hazards = []
    for token, kind in zip(tokens, types, strict=True):
        if kind == TokenType.NORMAL:
            continue
        text = token.decode("utf-8")
        parts = (text[:k] for k in range(1, len(text)))
        if any((len(a) == 1 or a in texts) and (len(b) == 1 or b in texts)
               for a, b in ((a, text[len(a):]) for a in parts)):
            hazards.append(text.replace(SPACE_MARKER, " "))
    return hazards


def gguf_vocab(tokenizer_dir: str | Path, n_rows: int) -> GGUFVocab:
    """Vocabulary metadata for a model with `n_rows` embedding rows; raises DataError for a tokenizer llama.cpp
    cannot reproduce or one larger than the model."""
    tokenizer = Tokenizer.load(tokenizer_dir)  # checks the special ids and byte pieces
    path = tokenizer.directory / MODEL_FILE
    proto = _read_proto(path)
    _check_expressible(proto, path)
    if len(proto.pieces) > n_rows:
        raise DataError(f"tokenizer {path} has {len(proto.pieces)} pieces but the model only {n_rows} rows")
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [_TYPES[p.type] for p in proto.pieces]
    padding = list(range(len(tokens), n_rows))
    tokens += [f"[PAD{i}]".encode() for i in padding]  # names as llama.cpp's own converter pads
    scores += [PADDING_SCORE] * len(padding)
    types += [TokenType.UNUSED] * len(padding)
    return GGUFVocab(tokens, scores, types, padding, merge_hazards(tokens, types))
