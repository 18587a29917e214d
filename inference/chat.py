"""Chat prompts for generation: a conversation rendered by the tokenizer's chat template (Tokenizer/chat.py, the
one definition of the format), cut to fit the context by dropping its oldest turns.

    ids = encode_chat(tokenizer, [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi!"}])      # ends with <|assistant|>
    for piece in generator.chat(messages, max_new_tokens=200, sampling=SamplingParams(0.7)):
        print(piece, end="")                                                  # stops at <|end_of_turn|>
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from inference.errors import GenerationError, HistoryTruncatedWarning
from Tokenizer import Tokenizer
from Tokenizer.chat import ChatFormatError, encode_chat, encode_chat_for_training, reply_stop_ids, validate_messages

__all__ = ["ChatFormatError", "ChatTooLongError", "encode_chat", "encode_chat_for_training", "fit_chat",
           "reply_end_ids", "trim_chat"]


def reply_end_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Tokens that end a reply: EOS and the chat format's own (ours: <|end_of_turn|> and the role markers, which
    cannot belong to a reply; an imported model's: its special tokens, its end of turn among them)."""
    return frozenset({tokenizer.eos_id, *reply_stop_ids(tokenizer)})


def _history_starts(messages: list[Mapping]) -> list[int]:
    """Where the kept history may start, oldest first: the first non-system message, then every later user
    message (a history never starts with a reply), then the last message, which is always kept."""
    last = len(messages) - 1
    starts = [i for i, m in enumerate(messages[:last]) if m["role"] == "user"]
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), last)
    return sorted({first, *starts, last})


def _kept(messages: list[Mapping], start: int) -> list[Mapping]:
    """The system messages before `start`, then every message from `start` on."""
    return [m for m in messages[:start] if m["role"] == "system"] + messages[start:]


class ChatTooLongError(GenerationError):
    """Even the system message(s) and the last message do not fit; `tokens` is how many they take."""

    def __init__(self, message: str, tokens: int):
        super().__init__(message)
        self.tokens = tokens


def trim_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], room: int) -> tuple[list[int], int]:
    """Prompt ids of a conversation (ending with <|assistant|>) in at most `room` tokens, and how many of its
    oldest messages were dropped for that (as few as possible; never a system message or the last message).
    ChatTooLongError when even those do not fit."""
    messages = validate_messages(messages)
    ids = encode_chat(tokenizer, messages)
    if len(ids) <= room:
        return ids, 0
    # Every message sits between markers, so dropping one never adds tokens: binary search for the longest
    # history that fits (a few encodings instead of one per dropped turn).
    starts = _history_starts(messages)
    shortest = encode_chat(tokenizer, _kept(messages, starts[-1]))
    if len(shortest) > room:
        raise ChatTooLongError(f"the system message(s) and the last message take {len(shortest)} tokens",
                               len(shortest))
    lo, hi, ids = 0, len(starts) - 1, shortest  # starts[hi] fits; starts[lo] may not
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = encode_chat(tokenizer, _kept(messages, starts[mid]))
        if len(candidate) <= room:
            hi, ids = mid, candidate
        else:
            lo = mid + 1
    return ids, len(messages) - len(_kept(messages, starts[hi]))


def fit_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], max_new_tokens: int, max_seq_len: int) -> list[int]:
    """Prompt ids of a conversation (ending with <|assistant|>) that leave room for max_new_tokens within
    max_seq_len: the oldest turns are dropped with a HistoryTruncatedWarning, as few as possible; system messages
    and the last message are always kept, and a GenerationError says so when even they do not fit."""
    try:
        ids, dropped = trim_chat(tokenizer, messages, max_seq_len - max_new_tokens)
    except ChatTooLongError as e:
        raise GenerationError(
            f"{e}; with max_new_tokens {max_new_tokens} that exceeds max_seq_len {max_seq_len}: shorten them or "
            "lower max_new_tokens"
        ) from None
    if dropped:
        warnings.warn(
            f"chat history + max_new_tokens {max_new_tokens} exceeds max_seq_len {max_seq_len}: dropped the "
            f"{dropped} oldest message(s), kept {len(messages) - dropped} ({len(ids)} tokens)",
            HistoryTruncatedWarning,
            stacklevel=3,
        )
    return ids
