"""Chat markers are control ids that text never encodes to; an old tokenizer gets them appended, ids unchanged."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataError
from tests.tokenizer.strategies import TRICKY, any_text
from Tokenizer import Tokenizer, train_tokenizer
from Tokenizer.chat import DEFAULT_TEMPLATE
from Tokenizer.extend import add_chat_tokens
from Tokenizer.tokenizer import CHAT_TEMPLATE_FILE, CHAT_TOKENS, END_OF_TURN, ROLE_TOKENS

MARKER_TEXTS = [*CHAT_TOKENS, "".join(CHAT_TOKENS), "hi <|user|> there<|end_of_turn|>\n", "<|assistant|>\u2581x"]
# Text made of marker strings, their halves and other tricky pieces, glued in any order.
with_markers = st.one_of(any_text, st.lists(st.sampled_from([*MARKER_TEXTS, "<|", "|>", "user", *TRICKY]),
                                             max_size=16).map("".join))


@pytest.fixture(scope="module")
def old_tokenizer(tmp_path_factory, tiny_corpus_texts) -> Tokenizer:
    """A tokenizer trained as before chat support: no markers, no template."""
    out = tmp_path_factory.mktemp("old") / "tokenizer"
    return train_tokenizer(tiny_corpus_texts, 512, out, progress=False, chat_tokens=False)


@pytest.fixture(scope="module")
def extended(old_tokenizer, tmp_path_factory) -> Tokenizer:
    return add_chat_tokens(old_tokenizer.directory, tmp_path_factory.mktemp("extended") / "tokenizer")


def test_trained_tokenizer_reserves_distinct_markers(tiny_tokenizer):
    ids = tiny_tokenizer.chat_token_ids
    assert list(ids) == list(CHAT_TOKENS)
    specials = {tiny_tokenizer.unk_id, tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id}
    assert len(set(ids.values()) | specials) == 8
    assert tiny_tokenizer.end_of_turn_id == ids[END_OF_TURN] != tiny_tokenizer.eos_id
    assert [tiny_tokenizer.role_id(r) for r in ROLE_TOKENS] == [ids[t] for t in ROLE_TOKENS.values()]
    assert (tiny_tokenizer.directory / CHAT_TEMPLATE_FILE).is_file()


@pytest.mark.parametrize("text", MARKER_TEXTS)
def test_marker_strings_in_text_are_text(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert not set(ids) & set(tiny_tokenizer.chat_token_ids.values())
    assert tiny_tokenizer.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=with_markers)
def test_no_text_encodes_to_a_marker(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert not set(ids) & set(tiny_tokenizer.chat_token_ids.values())
    assert tiny_tokenizer.decode(ids) == text


def test_markers_decode_to_nothing(tiny_tokenizer):
    ids = tiny_tokenizer.chat_token_ids
    hello = tiny_tokenizer.encode("hello")
    assert tiny_tokenizer.decode([ids["<|user|>"], *hello, ids[END_OF_TURN]]) == "hello"


def test_old_tokenizer_says_how_to_add_the_markers(old_tokenizer):
    assert not old_tokenizer.has_chat_tokens
    with pytest.raises(DataError, match=r"no chat tokens.*scripts/add_chat_tokens\.py"):
        _ = old_tokenizer.end_of_turn_id


def test_extension_appends_markers_and_keeps_every_id(old_tokenizer, extended, tiny_corpus_texts):
    assert extended.vocab_size == old_tokenizer.vocab_size + len(CHAT_TOKENS)
    assert list(extended.chat_token_ids.values()) == list(range(old_tokenizer.vocab_size, extended.vocab_size))
    texts = [*tiny_corpus_texts[:100], *TRICKY, *MARKER_TEXTS]
    assert extended.encode_batch(texts) == old_tokenizer.encode_batch(texts)
    every_id = list(range(old_tokenizer.vocab_size))
    assert extended.decode(every_id) == old_tokenizer.decode(every_id)
    assert (extended.directory / CHAT_TEMPLATE_FILE).read_text() == DEFAULT_TEMPLATE.read_text()
    meta = json.loads((extended.directory / "meta.json").read_text())
    assert meta["vocab_size"] == extended.vocab_size and meta["chat_tokens_added_to"] == old_tokenizer.content_hash


def test_extension_refuses_its_own_directory_and_a_chat_tokenizer(old_tokenizer, extended, tmp_path):
    before = (old_tokenizer.directory / "tokenizer.model").read_bytes()
    with pytest.raises(DataError, match="own directory"):
        add_chat_tokens(old_tokenizer.directory, old_tokenizer.directory)
    assert (old_tokenizer.directory / "tokenizer.model").read_bytes() == before
    with pytest.raises(DataError, match="already has the chat tokens"):
        add_chat_tokens(extended.directory, tmp_path / "again")
    assert not (tmp_path / "again").exists()
