"""Conversation sources for supervised fine-tuning: rows of chat messages, checked and located.

Sources are the same specs as for pretraining text (core/sources.py): .jsonl / .jsonl.gz files, .parquet files,
directories and globs of them, `hf:NAME[:CONFIG][@SPLIT]`, and the built-in `builtin:python-stdlib-chat`
(data/stdlib_chat.py). A row is either

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], "topic": "..."}   # several turns
    {"prompt": "...", "completion": "...", "system": "...", "topic": "..."}                        # one exchange

where `system` and `topic` are optional. The topic groups conversations for the train/validation split: a topic is
held out whole (data/chat_dataset.py), so validation measures questions about things never fine-tuned on. A
malformed row is one SourceError naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import SourceError
from core.sources import Source, decode_utf8, hf_records, replace_surrogates, resolve_sources

ROLES = ("system", "user", "assistant")
BUILTIN_CHAT = "python-stdlib-chat"


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict, ...]  # {"role", "content"} dicts, checked
    topic: str | None  # what the split groups by; None: the conversation is its own group
    where: str  # file:line (or row) for error messages


def check_row(row: object, where: str) -> Conversation:
    """A Conversation from one row in either format; SourceError naming `where` and the field if malformed."""
    if not isinstance(row, dict):
        raise SourceError(f"{where}: a conversation row must be an object, got {type(row).__name__}")
    topic = row.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise SourceError(f"{where}: field 'topic' must be a string, got {type(topic).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise SourceError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
        checked = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise SourceError(f"{where}: messages[{i}] must be an object, got {type(m).__name__}")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise SourceError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise SourceError(f"{where}: messages[{i}].content must be a string, got {type(content).__name__}")
            checked.append({"role": role, "content": replace_surrogates(content)[0]})
    elif "prompt" in row or "completion" in row:
        checked = []
        for key in ("system", "prompt", "completion"):
            value = row.get(key)
            if value is None and key == "system":
                continue
            if not isinstance(value, str):
                raise SourceError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
            role = {"system": "system", "prompt": "user", "completion": "assistant"}[key]
            checked.append({"role": role, "content": replace_surrogates(value)[0]})
    else:
        raise SourceError(f"{where}: a conversation row needs a 'messages' list or 'prompt' and 'completion' fields")
    if not any(m["role"] == "assistant" for m in checked):
        raise SourceError(f"{where}: field 'messages' has no assistant turn: there is nothing to learn from it")
    return Conversation(tuple(checked), topic, where)


def _jsonl_rows(path: Path) -> Iterator[tuple[object, str]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = decode_utf8(raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw)[0]
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), f"{path}:{lineno}"
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"cannot read {path}: {e}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[object, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield record, f"{path} row {row}"
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"cannot read parquet file {path}: {e}") from None


def resolve_chat_sources(specs: list[str]) -> list[Source]:
    """Sources of conversations; the built-in corpus, or files of kinds that hold rows (jsonl, parquet, hf)."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    sources = []
    for spec in specs:
        if spec == f"builtin:{BUILTIN_CHAT}":
            sources.append(Source("builtin", BUILTIN_CHAT))
            continue
        if spec.startswith("builtin:"):
            raise SourceError(f"unknown conversation source {spec!r}: the built-in one is builtin:{BUILTIN_CHAT}")
        for source in resolve_sources([spec]):
            if source.kind == "text":
                raise SourceError(f"{source.location} is a plain text file; conversations come as .jsonl, "
                                  ".jsonl.gz or .parquet rows with 'messages' or 'prompt'/'completion'")
            sources.append(source)
    return sources


def iter_conversations(sources: list[Source]) -> Iterator[Conversation]:
    """Every conversation of the resolved sources, in order, checked."""
    for source in sources:
        if source.kind == "builtin":
            from data.stdlib_chat import stdlib_conversations

            rows = ((row, f"builtin:{BUILTIN_CHAT} #{i}") for i, row in enumerate(stdlib_conversations()))
        elif source.kind == "jsonl":
            rows = _jsonl_rows(Path(source.location))
        elif source.kind == "parquet":
            rows = _parquet_rows(Path(source.location))
        else:
            rows = hf_records(source.location)
        for row, where in rows:
            yield check_row(row, where)
