"""TextStream: pieces are whole characters, join to the decoded text, and stop strings are cut, never released."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.errors import GenerationError
from inference.streaming import CONTEXT_TOKENS, REPLACEMENT, TextStream
from Tokenizer import Tokenizer

MULTIBYTE = "Hello 🎉 world, 你好世界! Café ☕ and 😀👍🏽 done. 🇯🇵"


def stream_all(tok: Tokenizer, prompt: str, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    """Push the tokens of `text` (generated after `prompt`) one by one; return the pieces and the stream."""
    prompt_ids = tok.encode(prompt)
    ids = tok.encode(prompt + text)[len(prompt_ids):]
    assert tok.encode(prompt + text)[: len(prompt_ids)] == prompt_ids  # prompts below end at a token boundary
    stream = TextStream(tok.decode, prompt_ids, stop)
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.done:
            break
    pieces.append(stream.finish("length"))
    return [p for p in pieces if p], stream


def test_byte_fallback_characters_are_held_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    assert len(ids) > len(MULTIBYTE) // 2  # emoji and CJK really are several byte tokens each
    pieces, stream = stream_all(tokenizer, "", MULTIBYTE)
    assert "".join(pieces) == stream.text == MULTIBYTE
    assert all(REPLACEMENT not in p for p in pieces)
    assert "🎉" in pieces and "世" in pieces  # released whole, one character at a time


def test_leading_spaces_survive_after_the_prompt(tokenizer: Tokenizer) -> None:
    pieces, stream = stream_all(tokenizer, "Hello", " world, 你好 hello there.")
    assert stream.text == " world, 你好 hello there."
    assert pieces[0].startswith(" ")


@pytest.mark.parametrize(
    "stop, expected",
    [
        (("world",), "Hello 🎉 "),
        (("世界", "world"), "Hello 🎉 "),  # the earliest stop string wins
        (("世界",), "Hello 🎉 world, 你好"),
        (("😀",), "Hello 🎉 world, 你好世界! Café ☕ and "),
        (("d, 你",), "Hello 🎉 worl"),  # a stop string spanning several tokens
        (("wow",), MULTIBYTE),  # "w" starts it twice and is held, then released
    ],
)
def test_stop_strings_end_the_text_and_are_not_returned(tokenizer: Tokenizer, stop, expected: str) -> None:
    pieces, stream = stream_all(tokenizer, "", MULTIBYTE, stop)
    assert "".join(pieces) == stream.text == expected
    assert stream.finish_reason == ("length" if expected == MULTIBYTE else "stop")


def test_a_possible_stop_start_is_held_back(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer.decode, [], ["ab!"])
    released = "".join(stream.push(t) for t in tokenizer.encode("xx a"))
    assert released == "xx "  # "a" might begin "ab!"
    assert stream.finish("eos") == "a"
    assert stream.text == "xx a"


def test_empty_stop_string_is_rejected(tokenizer: Tokenizer) -> None:
    with pytest.raises(GenerationError, match="stop"):
        TextStream(tokenizer.decode, [], [""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    stop=st.sampled_from(["", "e", "😀", "\n", "ab"]),
)
def test_pieces_join_to_the_text_for_any_string(tokenizer: Tokenizer, text: str, stop: str) -> None:
    stops = (stop,) if stop else ()
    pieces, stream = stream_all(tokenizer, "", text, stops)
    cut = text.find(stop) if stop else -1
    expected = text if cut < 0 else text[:cut]
    assert "".join(pieces) == stream.text == expected


def test_long_streams_join_exactly_and_decode_about_once_per_token(tokenizer: Tokenizer) -> None:
    """Many context cuts (every CONTEXT_TOKENS tokens): the pieces still join to the text, word-initial spaces
    and multi-byte characters included, at about one tokenizer decode per token."""
    text = " ".join([MULTIBYTE, "the quick brown fox jumps over the lazy dog"] * 6)
    calls = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return tokenizer.decode(ids)

    prompt_ids = tokenizer.encode("Hello")
    ids = tokenizer.encode("Hello" + text)[len(prompt_ids):]
    stream = TextStream(decode, prompt_ids)
    pieces = [stream.push(token) for token in ids] + [stream.finish("length")]
    assert "".join(pieces) == stream.text == tokenizer.decode(tokenizer.encode("Hello" + text))[len("Hello"):]
    assert len(ids) > 100 and len(calls) <= 1.25 * len(ids) + 1
    assert max(calls) <= 2 * CONTEXT_TOKENS + 4  # the context, and at most the 4 byte tokens of one character
