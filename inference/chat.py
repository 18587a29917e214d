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
from Tokenizer.chat import ChatFormatError, encode_chat, encode_chat_for_training, validate_messages

__all__ = ["ChatFormatError", "encode_chat", "encode_chat_for_training", "fit_chat", "reply_end_ids"]


def reply_end_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Tokens that end a reply: <|end_of_turn|>, and EOS or a role marker, which cannot belong to a reply."""
    return frozenset({tokenizer.eos_id, *tokenizer.chat_token_ids.values()})


def _drop_oldest_turn(messages: list[Mapping]) -> bool:
    """Remove the oldest non-system message and any assistant replies right after it (a history then never
    starts with a reply); the last message stays. False when nothing can be dropped."""
    droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
    if not droppable:
        return False
    del messages[droppable[0]]
    while True:
        rest = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
        if not rest or messages[rest[0]]["role"] != "assistant":
            return True
        del messages[rest[0]]


def fit_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], max_new_tokens: int, max_seq_len: int) -> list[int]:
    """Prompt ids of a conversation (ending with <|assistant|>) that leave room for max_new_tokens within
    max_seq_len: the oldest turns are dropped with a HistoryTruncatedWarning; system messages and the last
    message are always kept, and a GenerationError says so when even they do not fit."""
    kept = validate_messages(messages)
    room = max_seq_len - max_new_tokens
    ids = encode_chat(tokenizer, kept)
    while len(ids) > room:
        if not _drop_oldest_turn(kept):
            raise GenerationError(
                f"the system message(s) and the last message take {len(ids)} tokens; with max_new_tokens "
                f"{max_new_tokens} that exceeds max_seq_len {max_seq_len}: shorten them or lower max_new_tokens"
            )
        ids = encode_chat(tokenizer, kept)
    if len(kept) < len(messages):
        warnings.warn(
            f"chat history + max_new_tokens {max_new_tokens} exceeds max_seq_len {max_seq_len}: dropped the "
            f"{len(messages) - len(kept)} oldest message(s), kept {len(kept)} ({len(ids)} tokens)",
            HistoryTruncatedWarning,
            stacklevel=3,
        )
    return ids
