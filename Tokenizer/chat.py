"""Conversations -> token ids through the tokenizer's chat template (DIR/chat_template.jinja).

The template is a Hugging Face style Jinja template, rendered in a sandbox like transformers does, and it is the
only definition of the chat format: training data, generation prompts, the server and the exported Hugging Face
tokenizer all use it. Its output is text holding chat markers (Tokenizer.CHAT_TOKENS); each marker becomes its
control id and the text between markers is encoded as ordinary text. Message contents are never searched for
markers: they are rendered as placeholders that are swapped back after the markers have been found, so the string
"<|user|>" inside a message stays text. That is what transformers gives with
`apply_chat_template(..., sanitize_control_tokens=True)`, and without that flag for every content that holds no
marker string.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import DataError, UserError
from Tokenizer.tokenizer import (
    ADD_CHAT_TOKENS_HINT,
    CHAT_TEMPLATE_FILE,
    CHAT_TOKENS,
    END_OF_TURN,
    ROLE_TOKENS,
    Tokenizer,
)

ROLES = tuple(ROLE_TOKENS)  # system, user, assistant
DEFAULT_TEMPLATE = Path(__file__).with_name(CHAT_TEMPLATE_FILE)  # copied into every tokenizer that gets chat tokens
_MARKERS = re.compile("|".join(re.escape(t) for t in CHAT_TOKENS))


class ChatFormatError(UserError):
    """A conversation that cannot be rendered: a bad role, content or message; the message names the field."""


def validate_messages(messages: object) -> list[Mapping]:
    """Check that `messages` is a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatFormatError(f"messages[{i}] must be an object with 'role' and 'content', "
                                  f"got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ChatFormatError(f"messages[{i}].content must be a string, got {type(content).__name__}")
    return list(messages)


def chat_template(tokenizer: Tokenizer) -> str:
    """Text of the tokenizer's chat template; a DataError saying how to add one when the tokenizer has none."""
    _ = tokenizer.chat_token_ids  # without markers: a DataError that says how to add them
    path = tokenizer.directory / CHAT_TEMPLATE_FILE
    if not path.is_file():
        raise DataError(f"tokenizer {tokenizer.directory} has no {CHAT_TEMPLATE_FILE}; {ADD_CHAT_TOKENS_HINT}")
    return path.read_text(encoding="utf-8")


def _raise_exception(message: str) -> None:
    raise ChatFormatError(message)


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    # The same environment settings as transformers' chat templates, so a template renders identically there.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


@dataclass(frozen=True)
class _Part:
    text: str = ""  # ordinary text (template text or a message's content)
    marker: str | None = None  # a chat marker
    message: int | None = None  # index of the message whose content `text` is


def _render(template: str, messages: list[Mapping], add_generation_prompt: bool) -> list[_Part]:
    """Render with placeholders for the contents; return the output as text, marker and content parts."""
    nonce = uuid.uuid4().hex
    placeholders = [f"\x00{nonce}:{i}\x00" for i in range(len(messages))]
    masked = [{**m, "content": placeholders[i]} for i, m in enumerate(messages)]
    try:
        rendered = _compile(template).render(messages=masked, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise DataError(f"cannot render the chat template: {e}") from None
    parts, seen = [], set()
    for piece in re.split(f"(\x00{nonce}:\\d+\x00)", rendered):
        if piece.startswith(f"\x00{nonce}:"):
            i = int(piece[len(nonce) + 2 : -1])
            if i in seen:
                raise DataError(f"the chat template writes messages[{i}].content twice; it must write it once")
            seen.add(i)
            parts.append(_Part(messages[i]["content"], message=i))
            continue
        start = 0
        for match in _MARKERS.finditer(piece):
            parts += [_Part(piece[start : match.start()]), _Part(marker=match.group())]
            start = match.end()
        parts.append(_Part(piece[start:]))
    if len(seen) != len(messages):
        raise DataError("the chat template must write every message's content unchanged, exactly once")
    return parts


def _encode(
    tokenizer: Tokenizer, messages: object, add_generation_prompt: bool
) -> tuple[list[int], list[bool]]:
    """Ids of the rendered conversation and, per id, whether it belongs to an assistant reply (its content and
    the end-of-turn marker that closes it)."""
    messages = validate_messages(messages)
    ids_of = tokenizer.chat_token_ids
    parts = _render(chat_template(tokenizer), messages, add_generation_prompt)
    ids: list[int] = []
    mask: list[bool] = []
    run: list[str] = []  # text between two markers is encoded as one string, as transformers does
    in_reply = False  # the current run holds an assistant message's content

    def flush() -> None:
        tokens = tokenizer.encode("".join(run)) if run else []
        ids.extend(tokens)
        mask.extend([in_reply] * len(tokens))
        run.clear()

    for part in parts:
        if part.marker is None:
            run.append(part.text)
            in_reply |= part.message is not None and messages[part.message]["role"] == "assistant"
            continue
        flush()
        ids.append(ids_of[part.marker])
        mask.append(in_reply and part.marker == END_OF_TURN)
        in_reply = False
    flush()
    return ids, mask


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template; with add_generation_prompt the ids
    end with the <|assistant|> marker that asks for the next reply. Bad messages raise ChatFormatError."""
    return _encode(tokenizer, messages, add_generation_prompt)[0]


def encode_chat_for_training(tokenizer: Tokenizer, messages: Sequence[Mapping]) -> tuple[list[int], list[bool]]:
    """(ids, target_mask) of a whole conversation for supervised fine-tuning: target_mask[i] is True where ids[i]
    is to be predicted, which is every token of an assistant message's content and the <|end_of_turn|> that
    closes it; system and user messages and the role markers are context only."""
    return _encode(tokenizer, messages, add_generation_prompt=False)
