"""Conversations -> token ids through the tokenizer's chat template (DIR/chat_template.jinja).

The template is a Hugging Face style Jinja template, rendered in a sandbox like transformers does, and it is the
only definition of the chat format: training data, generation prompts, the server and the exported Hugging Face
tokenizer all use it. Its output is text holding chat markers (Tokenizer.CHAT_TOKENS); each marker becomes its
control id and the text between markers is encoded as ordinary text. Message contents are never searched for
markers: they are rendered as placeholders that are swapped back after the markers have been found, so the string
"<|user|>" inside a message stays text. That is what transformers gives with
`apply_chat_template(..., sanitize_control_tokens=True)`, and without that flag for every content that holds no
marker string.

An imported model's tokenizer (hf_tokenizer.py) brings its own format: its template (Llama 3's, say), its special
tokens as the markers (<|start_header_id|>, <|eot_id|>, ...), and `bos_token` and the other named special tokens
as template variables; the ids equal transformers' `apply_chat_template(..., add_generation_prompt=True,
sanitize_control_tokens=True)` (and without that flag for every content that holds no special-token string).
A template that changes contents (Llama 3's `| trim`) is rendered with the contents themselves, their marker
strings escaped so that they stay text; the reply tokens then cannot be told apart for training.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import DataError, UserError
from Tokenizer.base import ChatFormat
from Tokenizer.hf_tokenizer import HFTokenizer
from Tokenizer.tokenizer import (
    ADD_CHAT_TOKENS_HINT,
    CHAT_TEMPLATE_FILE,
    ROLE_TOKENS,
    Tokenizer,
)

ROLES = tuple(ROLE_TOKENS)  # system, user, assistant
DEFAULT_TEMPLATE = Path(__file__).with_name(CHAT_TEMPLATE_FILE)  # copied into every tokenizer that gets chat tokens


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


def chat_format(tokenizer: Tokenizer | HFTokenizer) -> ChatFormat:
    """The tokenizer's chat format: ours (CHAT_TOKENS, DIR/chat_template.jinja; every marker ends a reply, since
    none can belong to one), or an imported model's own; a DataError saying what is missing."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.chat_format()
    markers = tokenizer.chat_token_ids  # without markers: a DataError that says how to add them
    path = tokenizer.directory / CHAT_TEMPLATE_FILE
    if not path.is_file():
        raise DataError(f"tokenizer {tokenizer.directory} has no {CHAT_TEMPLATE_FILE}; {ADD_CHAT_TOKENS_HINT}")
    return ChatFormat(path.read_text(encoding="utf-8"), markers, frozenset(markers.values()), {}, strict=True)


def chat_template(tokenizer: Tokenizer | HFTokenizer) -> str:
    """Text of the tokenizer's chat template; a DataError saying how to add one when the tokenizer has none."""
    return chat_format(tokenizer).template


def _raise_exception(message: str) -> None:
    raise ChatFormatError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    # The same environment settings, functions and tojson filter (no HTML escaping) as transformers' chat
    # templates, so a template renders identically there.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(template)


@functools.lru_cache(maxsize=8)
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern:
    # Longest first, so a marker that starts another one never cuts it; no markers: a pattern that never matches.
    return re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)) or "(?!)")


@dataclass(frozen=True)
class _Part:
    text: str = ""  # ordinary text (template text or a message's content)
    marker: str | None = None  # a chat marker
    message: int | None = None  # index of the message whose content `text` is


def _split(text: str, pattern: re.Pattern, message: int | None = None) -> list[_Part]:
    """Text and marker parts of `text` (a message's content is one text part, never split)."""
    if message is not None:
        return [_Part(text, message=message)]
    parts, start = [], 0
    for match in pattern.finditer(text):
        parts += [_Part(text[start : match.start()]), _Part(marker=match.group())]
        start = match.end()
    return [*parts, _Part(text[start:])]


def _render(fmt: ChatFormat, messages: list[Mapping], add_generation_prompt: bool) -> tuple[list[_Part], bool]:
    """Render with placeholders for the contents; return the output as text, marker and content parts, and
    whether each content is its own part. A non-strict format whose template does not write every content once
    and unchanged (Llama 3 trims them) is rendered with the contents instead, as transformers does, the marker
    strings inside them kept as text: no content parts then."""
    template, pattern = _compile(fmt.template), _marker_pattern(tuple(fmt.markers))

    def render(contents: list[str]) -> str:
        try:
            return template.render(messages=[{**m, "content": c} for m, c in zip(messages, contents, strict=True)],
                                   add_generation_prompt=add_generation_prompt, **fmt.variables)
        except TemplateError as e:
            raise DataError(f"cannot render the chat template: {e}") from None

    nonce = uuid.uuid4().hex
    rendered = render([f"\x00{nonce}:{i}\x00" for i in range(len(messages))])
    parts, counts = [], [0] * len(messages)
    for piece in re.split(f"(\x00{nonce}:\\d+\x00)", rendered):
        i = int(piece[len(nonce) + 2 : -1]) if piece.startswith(f"\x00{nonce}:") else None
        if i is not None:
            counts[i] += 1
            parts += _split(messages[i]["content"], pattern, message=i)
        else:
            parts += _split(piece, pattern)
    once = all(c == 1 for c in counts)
    contents = [m["content"] for m in messages]
    if not fmt.strict and not (once and "".join(p.marker or p.text for p in parts) == render(contents)):
        # The marker strings inside contents become placeholders for the rendering and text after the split.
        found: list[str] = []
        escape = re.compile(f"\x00{nonce}!(\\d+)\x00")

        def hide(match: re.Match) -> str:
            found.append(match.group())
            return f"\x00{nonce}!{len(found) - 1}\x00"

        text = render([pattern.sub(hide, c) for c in contents])
        return [_Part(escape.sub(lambda m: found[int(m.group(1))], p.text), p.marker)
                for p in _split(text, pattern)], False
    if any(c > 1 for c in counts):
        i = next(i for i, c in enumerate(counts) if c > 1)
        raise DataError(f"the chat template writes messages[{i}].content twice; it must write it once")
    if not once:
        raise DataError("the chat template must write every message's content unchanged, exactly once")
    return parts, True


def _encode(
    tokenizer: Tokenizer | HFTokenizer, messages: object, add_generation_prompt: bool, need_mask: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of the rendered conversation and, per id, whether it belongs to an assistant reply (its content and
    the marker that closes it: <|end_of_turn|> here, <|eot_id|> in Llama 3's format)."""
    messages = validate_messages(messages)
    fmt = chat_format(tokenizer)
    # Text between markers never becomes a marker: ours never encodes to one; an imported tokenizer would match
    # the strings of its special tokens, so it spells them as text here.
    encode = tokenizer.encode_text if isinstance(tokenizer, HFTokenizer) else tokenizer.encode
    parts, by_message = _render(fmt, messages, add_generation_prompt)
    if need_mask and not by_message:
        raise DataError(f"the chat template of {tokenizer.directory} changes message contents (as Llama 3's `| trim` "
                        "does for surrounding spaces), so the tokens of each reply cannot be told apart for training")
    ids: list[int] = []
    mask: list[bool] = []
    run: list[_Part] = []  # text between two markers is encoded as one string, as transformers does
    in_reply = False  # the current run holds an assistant message's content

    def is_reply(part: _Part) -> bool:
        return part.message is not None and messages[part.message]["role"] == "assistant"

    def flush() -> None:
        tokens = encode("".join(p.text for p in run)) if run else []
        labels = [False] * len(tokens)
        if need_mask and any(is_reply(p) for p in run):
            # The reply's tokens within the run (an imported template writes text around it, e.g. Llama 3's
            # "\n\n"): exact when the run's pieces encode to the same ids one by one.
            pieces = [encode(p.text) for p in run]
            if [i for piece in pieces for i in piece] != tokens:
                raise DataError("a reply and the chat template's text around it share tokens, so the tokens of "
                                "the reply cannot be told apart for training")
            labels = [is_reply(p) for p, piece in zip(run, pieces, strict=True) for _ in piece]
        ids.extend(tokens)
        mask.extend(labels)
        run.clear()

    for part in parts:
        if part.marker is None:
            run.append(part)
            in_reply |= is_reply(part)
            continue
        flush()
        ids.append(fmt.markers[part.marker])
        mask.append(in_reply)  # the first marker after a reply closes it: a target too
        in_reply = False
    flush()
    return ids, mask


def reply_stop_ids(tokenizer: Tokenizer | HFTokenizer) -> frozenset[int]:
    """Ids that end a reply besides EOS: our chat markers (<|end_of_turn|>, or a role marker, which cannot belong
    to a reply), or an imported model's special tokens (its end of turn among them)."""
    return chat_format(tokenizer).stop_ids


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template; with add_generation_prompt the ids
    end with what asks for the next reply (<|assistant|>; Llama 3: its assistant header). Bad messages raise
    ChatFormatError."""
    return _encode(tokenizer, messages, add_generation_prompt)[0]


def encode_chat_for_training(tokenizer: Tokenizer, messages: Sequence[Mapping]) -> tuple[list[int], list[bool]]:
    """(ids, target_mask) of a whole conversation for supervised fine-tuning: target_mask[i] is True where ids[i]
    is to be predicted, which is every token of an assistant message's content and the <|end_of_turn|> that
    closes it; system and user messages and the role markers are context only."""
    return _encode(tokenizer, messages, add_generation_prompt=False, need_mask=True)
