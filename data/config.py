"""The `data:` section of a run config: where the training text comes from and where its tokenized form lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError


@dataclass
class DataConfig:
    """Where the training text comes from and where its tokenized form lives."""

    # files, directories, globs, hf:NAME[:CONFIG][@SPLIT], or builtin:python-stdlib
    sources: list[str] = field(default_factory=lambda: ["builtin:python-stdlib"])
    # prepared shards + manifest.json; None: out/datasets/<config name>-<hash of the other data settings and
    # model.vocab_size>, so other sources get their own dataset (data/dataset_dir.py)
    dataset_dir: str | None = None
    # SentencePiece model directory; None: <dataset_dir>/tokenizer, trained with model.vocab_size when missing
    tokenizer_dir: str | None = None
    text_field: str = "text"  # field holding the text in .jsonl / .parquet sources
    val_fraction: float = 0.005  # fraction of documents held out for validation (chosen per document, deterministic)
    workers: int = 0  # tokenization processes; 0 means all cores
    tokenizer_sample_mb: int = 64  # MB of text sampled to train the tokenizer (bounds its memory)
    # text: documents for pretraining. chat: conversations for supervised fine-tuning (data/conversations.py), the
    # loss on assistant tokens only; the tokenizer is data.tokenizer_dir, else the one of train.init_from
    format: Literal["text", "chat"] = "text"
    pack: bool = True  # chat: pack conversations into rows with document masking (false: one per row, padded)

    def validate(self) -> None:
        """Raise ConfigError naming the first data.* key that is out of range."""
        if not self.sources:
            raise ConfigError("data.sources must name at least one source")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if self.format == "chat" and self.sources == ["builtin:python-stdlib"]:
            raise ConfigError("data.format=chat needs conversation sources: set data.sources (e.g. "
                              "[builtin:python-stdlib-chat] or .jsonl files of messages)")
        if self.tokenizer_sample_mb <= 0:
            raise ConfigError(f"data.tokenizer_sample_mb must be positive, got {self.tokenizer_sample_mb}")
