"""decode(encode(x)) == x for any string, and the word-aligned chunking never changes the ids."""

from __future__ import annotations

import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tokenizer.strategies import TRICKY, any_text, tricky_text
from Tokenizer.tokenizer import CHUNK_CHARS, MODEL_FILE, UNK_ID


@settings(max_examples=400, deadline=None)
@given(text=any_text)
def test_decode_inverts_encode(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert UNK_ID not in ids  # byte fallback covers every character
    assert all(0 <= i < tiny_tokenizer.vocab_size for i in ids)


def test_tricky_strings_round_trip(tiny_tokenizer):
    for text in [*TRICKY, "", " leading", "trailing ", "  many   spaces  ", "\n\nx\n\n", "\t\tx", "a\u2581b c"]:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text, repr(text)


def test_literal_space_marker_is_byte_encoded(tiny_tokenizer):
    # SentencePiece writes spaces as U+2581; a real U+2581 must not come back as a space.
    reference = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer.directory / MODEL_FILE))
    utf8_bytes = [reference.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]
    assert tiny_tokenizer.encode("a\u2581b") == tiny_tokenizer.encode("a") + utf8_bytes + tiny_tokenizer.encode("b")
    assert tiny_tokenizer.decode(utf8_bytes) == "\u2581"


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.one_of(tricky_text, st.sampled_from(["word ", "  indented\n", "x" * 700])), min_size=20))
def test_long_texts_encode_like_plain_sentencepiece(tiny_tokenizer, parts):
    # Texts longer than CHUNK_CHARS are encoded in chunks; the ids must be those of one SentencePiece call.
    text = "".join(parts).replace("\u2581", "")  # the marker is the one place we differ on purpose
    reference = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer.directory / MODEL_FILE))
    assert tiny_tokenizer.encode(text) == reference.encode(text)


def test_corpus_documents_encode_like_plain_sentencepiece(tiny_tokenizer, tiny_corpus_texts):
    reference = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer.directory / MODEL_FILE))
    long_docs = ["".join(tiny_corpus_texts[i : i + 10]) for i in range(0, 200, 10)]
    assert all(len(doc) > 4 * CHUNK_CHARS for doc in long_docs)
    assert tiny_tokenizer.encode_batch(long_docs) == reference.encode(long_docs)
