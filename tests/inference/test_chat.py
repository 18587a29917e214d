"""Generator.chat: the reply to a conversation, streamed, ending at end-of-turn; oldest turns dropped to fit."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from core.errors import DataError
from inference import (
    ChatFormatError,
    GenerationError,
    Generator,
    HistoryTruncatedWarning,
    PromptTruncatedWarning,
    SamplingParams,
    encode_chat,
    fit_chat,
)
from tests.inference.conftest import CONVERSATIONS, GREETING, MAX_SEQ_LEN

SYSTEM = {"role": "system", "content": "Be terse."}


@pytest.fixture(scope="module")
def chat_gen(chat_ckpt: Path) -> Generator:
    return Generator.from_checkpoint(chat_ckpt, device="cpu")


@pytest.fixture(scope="module")
def random_gen(random_ckpt: Path) -> Generator:
    return Generator.from_checkpoint(random_ckpt, device="cpu")


def reply(gen: Generator, messages, **kwargs) -> str:
    pieces = list(gen.chat(messages, **kwargs))
    assert "".join(pieces) == gen.last[0].text
    return gen.last[0].text


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_reply_ends_at_end_of_turn(chat_gen, conversation):
    messages = CONVERSATIONS[conversation]
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            assert reply(chat_gen, messages[:k], max_new_tokens=40) == message["content"]
            done = chat_gen.last[0]
            assert done.finish_reason == "eos"
            assert chat_gen.tokenizer.end_of_turn_id not in done.token_ids
            assert done.prompt_tokens == len(encode_chat(chat_gen.tokenizer, messages[:k]))


def test_history_and_system_message_change_the_reply(chat_gen):
    question = {"role": "user", "content": "And then?"}
    assert reply(chat_gen, [question], max_new_tokens=40) == "Coffee and tea."
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": GREETING}, question]
    assert reply(chat_gen, history, max_new_tokens=40) == "The end of the story."
    assert reply(chat_gen, [SYSTEM, {"role": "user", "content": "Hello"}], max_new_tokens=40) == "Done and dusted."


def test_stop_string_and_token_limit(chat_gen):
    hello = [{"role": "user", "content": "Hello"}]
    assert reply(chat_gen, hello, max_new_tokens=40, stop=["hello"]) == "Hello world, "
    assert chat_gen.last[0].finish_reason == "stop"
    full = chat_gen.tokenizer.encode(GREETING)
    assert reply(chat_gen, hello, max_new_tokens=3) == chat_gen.tokenizer.decode(full[:3])
    assert chat_gen.last[0].finish_reason == "length" and chat_gen.last[0].token_ids == full[:3]


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_chat_equals_greedy_generate_on_the_rendered_prompt(random_gen, seed):
    tok = random_gen.tokenizer
    ends = {tok.eos_id, *tok.chat_token_ids.values()}
    conversations = [[{"role": "user", "content": "Hello"}], [SYSTEM, *CONVERSATIONS[0][:3]], CONVERSATIONS[2][:2]]
    for messages in conversations:
        text = reply(random_gen, messages, max_new_tokens=30, seed=seed)
        done = random_gen.last[0]
        tokens = random_gen.generate_ids([encode_chat(tok, messages)], 30)[0]
        cut = next((i for i, t in enumerate(tokens) if t in ends), len(tokens))
        assert done.token_ids == tokens[:cut]
        assert done.finish_reason == ("eos" if cut < len(tokens) else "length")
        assert text == tok.decode(tokens[:cut])


def test_sampled_chat_is_reproducible(random_gen):
    messages = [{"role": "user", "content": "Hello"}]
    sampling = SamplingParams(temperature=1.0, top_k=50)
    first = reply(random_gen, messages, max_new_tokens=20, sampling=sampling, seed=7)
    assert reply(random_gen, messages, max_new_tokens=20, sampling=sampling, seed=7) == first


def long_history(turns: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}: the quick brown fox?"},
                     {"role": "assistant", "content": f"answer {i}: the lazy dog."}]
    return [*messages, {"role": "user", "content": "last question"}]


def test_long_history_drops_oldest_turns_and_keeps_the_system_message(random_gen):
    tok = random_gen.tokenizer
    messages = long_history(8)
    max_new = 16
    assert len(encode_chat(tok, messages)) > MAX_SEQ_LEN - max_new
    with pytest.warns(HistoryTruncatedWarning, match="dropped the 1[0-9] oldest message"):
        ids = fit_chat(tok, messages, max_new, MAX_SEQ_LEN)
    assert len(ids) <= MAX_SEQ_LEN - max_new
    # What is left is the system message and the newest whole turns, starting with a user message.
    kept = next(messages[j:] for j in range(1, len(messages))
                if messages[j]["role"] == "user" and ids == encode_chat(tok, [SYSTEM, *messages[j:]]))
    assert len(encode_chat(tok, [SYSTEM, *messages[-len(kept) - 2 :]])) > MAX_SEQ_LEN - max_new  # dropped no more
    assert ids[0] == tok.role_id("system")
    with pytest.warns(PromptTruncatedWarning):  # the chat warning is a prompt-truncation warning too
        reply(random_gen, messages, max_new_tokens=max_new)
    assert random_gen.last[0].prompt_tokens == len(ids)


def test_a_fitting_history_is_not_cut(random_gen):
    messages = long_history(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_chat(random_gen.tokenizer, messages, 16, MAX_SEQ_LEN) == encode_chat(random_gen.tokenizer, messages)


def test_system_and_last_message_that_cannot_fit_are_an_error(random_gen):
    messages = [SYSTEM, {"role": "user", "content": "the quick brown fox " * 30}]
    with pytest.raises(GenerationError, match=r"last message take \d+ tokens"):
        random_gen.chat(messages, max_new_tokens=16)


@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "robot", "content": "hi"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\.content"),
    ([], "non-empty"),
])
def test_bad_messages_raise_before_generating(random_gen, messages, field):
    with pytest.raises(ChatFormatError, match=field):
        random_gen.chat(messages, max_new_tokens=16)  # raised by the call itself, not on the first piece


def test_a_tokenizer_without_chat_tokens_says_how_to_add_them(no_chat_ckpt):
    gen = Generator.from_checkpoint(no_chat_ckpt, device="cpu")
    with pytest.raises(DataError, match=r"add_chat_tokens\.py"):
        gen.chat([{"role": "user", "content": "hi"}], max_new_tokens=16)


def drop_turns_one_by_one(tok, messages: list[dict], room: int) -> list[int] | None:
    """Reference for fit_chat: drop the oldest non-system message (and replies right after it) until it fits;
    None when only system messages and the last message are left and they do not fit."""
    def oldest(kept: list[dict]) -> int | None:
        return next((i for i, m in enumerate(kept[:-1]) if m["role"] != "system"), None)

    kept = list(messages)
    while len(encode_chat(tok, kept)) > room:
        if oldest(kept) is None:
            return None
        del kept[oldest(kept)]
        while (i := oldest(kept)) is not None and kept[i]["role"] == "assistant":
            del kept[i]
    return encode_chat(tok, kept)


@pytest.mark.parametrize("seed", range(6))
def test_fit_chat_drops_the_fewest_oldest_turns(random_gen, seed):
    # Random histories, some starting with a reply or holding a system message in the middle.
    rng = random.Random(seed)
    roles = ["user", "assistant"]
    messages = [SYSTEM] if seed % 2 else []
    messages += [{"role": "assistant", "content": "earlier reply"}] if seed % 3 == 0 else []
    for i in range(rng.randint(3, 12)):
        messages.append({"role": roles[i % 2], "content": "the quick brown fox " * rng.randint(0, 4)})
        if rng.random() < 0.1:
            messages.append({"role": "system", "content": "Keep going."})
    messages.append({"role": "user", "content": "last"})
    room = rng.randint(20, 60)
    expected = drop_turns_one_by_one(random_gen.tokenizer, messages, room)
    if expected is None:
        with pytest.raises(GenerationError, match="last message take"):
            fit_chat(random_gen.tokenizer, messages, MAX_SEQ_LEN - room, MAX_SEQ_LEN)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryTruncatedWarning)
        assert fit_chat(random_gen.tokenizer, messages, MAX_SEQ_LEN - room, MAX_SEQ_LEN) == expected
