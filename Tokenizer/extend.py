"""Give a tokenizer trained without chat markers those markers, keeping every existing id.

The SentencePiece ModelProto is edited directly: the markers are appended as CONTROL pieces (score 0), so they
take the ids vocab_size .. vocab_size + 3 and ordinary text encodes exactly as before (encode() never produces
a control piece). The chat template is written beside the model. A model trained with the old tokenizer then
needs its embedding and output head grown to match (model.vocab.resize_vocab; scripts/add_chat_tokens.py does
both).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2

from core.atomic import atomic_directory
from core.errors import DataError
from Tokenizer.chat import DEFAULT_TEMPLATE
from Tokenizer.tokenizer import CHAT_TEMPLATE_FILE, CHAT_TOKENS, MODEL_FILE, Tokenizer
from Tokenizer.train_tokenizer import META_FILE


def with_chat_tokens(model_bytes: bytes) -> bytes:
    """The serialized SentencePiece model with the chat markers appended as control pieces."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    existing = {p.piece: i for i, p in enumerate(proto.pieces)}
    for marker in CHAT_TOKENS:
        if marker in existing:
            raise DataError(f"the tokenizer already has a piece {marker!r} (id {existing[marker]}) that is not a "
                            "control symbol; it cannot be turned into a chat marker")
        proto.pieces.add(piece=marker, score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL)
    return proto.SerializeToString()


def add_chat_tokens(tokenizer_dir: str | Path, out_dir: str | Path) -> Tokenizer:
    """Write a copy of the tokenizer in tokenizer_dir, with the chat markers and the chat template, to out_dir
    (atomically; out_dir must differ from tokenizer_dir); returns it loaded."""
    source = Tokenizer.load(tokenizer_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.directory.resolve():
        raise DataError(f"--out {out_dir} is the tokenizer's own directory; write the extended copy elsewhere")
    if source.has_chat_tokens:
        raise DataError(f"tokenizer {source.directory} already has the chat tokens")
    model = with_chat_tokens((source.directory / MODEL_FILE).read_bytes())
    with atomic_directory(out_dir) as tmp:
        for path in source.directory.iterdir():  # keep whatever else the tokenizer directory holds
            if path.is_file() and path.name not in (MODEL_FILE, META_FILE, CHAT_TEMPLATE_FILE):
                shutil.copy2(path, tmp / path.name)
        (tmp / MODEL_FILE).write_bytes(model)
        shutil.copyfile(DEFAULT_TEMPLATE, tmp / CHAT_TEMPLATE_FILE)
        meta_path = source.directory / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update(vocab_size=source.vocab_size + len(CHAT_TOKENS), chat_tokens=list(CHAT_TOKENS),
                    chat_tokens_added_to=source.content_hash)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Tokenizer.load(out_dir)
