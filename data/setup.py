"""The data side of a training run, decided in one place: where the tokenizer lives, whether the dataset is
fresh, and whether tokenizer, dataset and model vocabulary fit together.

`prepare_training_data` (one process: it may write) trains the tokenizer and tokenizes the sources unless the
dataset is up to date; `open_training_data` (every process) opens what it made and checks it. Training calls
both; nothing here knows about models or optimizers beyond the embedding size it must cover.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError, SourceError
from data.chat_dataset import ChatDataset, check_chat_compatible, prepare_chat_dataset
from data.config import DataConfig
from data.dataset import TokenDataset, check_compatible
from data.prepare_data import DatasetConflict, prepare_dataset, tokenizer_location
from data.shards import MANIFEST
from Tokenizer import TextTokenizer, has_tokenizer, load_tokenizer
from Tokenizer.train_tokenizer import check_out_dir


@dataclass
class TrainingData:
    """A prepared dataset opened for training, with the tokenizer it was built with."""

    tokenizer_dir: Path
    tokenizer: TextTokenizer
    dataset: TokenDataset | ChatDataset


def prepare_training_data(cfg: DataConfig, vocab_size: int, progress: bool = True,
                          info: Callable[[str], None] = print) -> None:
    """Train the tokenizer (with `vocab_size` ids) and tokenize the sources into cfg.dataset_dir, unless the
    dataset there is up to date (then this is a stat of each source). A dataset or tokenizer built from other
    sources or settings is an error naming the key to change, never silently reused."""
    dataset_dir = Path(cfg.dataset_dir)
    tok_dir, inside = tokenizer_location(dataset_dir, cfg.tokenizer_dir)
    tokenizer_exists = has_tokenizer(tok_dir)
    if inside and tokenizer_exists:
        n = load_tokenizer(tok_dir).vocab_size
        if n != vocab_size:
            raise DataError(f"{tok_dir} holds a {n}-token tokenizer but model.vocab_size is {vocab_size}: set "
                            f"model.vocab_size={n}, or another data.dataset_dir to train a new tokenizer")
    if not inside and not tokenizer_exists:  # a tokenizer will be trained into data.tokenizer_dir: can it take one?
        check_out_dir(tok_dir, "data.tokenizer_dir")
    if not (dataset_dir / MANIFEST).is_file():
        info(f"preparing dataset {dataset_dir} from {', '.join(cfg.sources)}")
    try:
        prepare_dataset(
            cfg.sources, dataset_dir,
            tokenizer_dir=None if inside else tok_dir,
            vocab_size=None if tokenizer_exists else vocab_size,
            text_field=cfg.text_field,
            val_fraction=cfg.val_fraction,
            workers=cfg.workers,
            tokenizer_sample_mb=cfg.tokenizer_sample_mb,
            progress=progress,
            out_flag="data.dataset_dir",
        )
    except SourceError as e:  # a missing source file, a malformed line: the inputs are wrong, not the directory
        raise SourceError(f"data.sources: {e}") from None
    except DatasetConflict as e:  # only a directory that holds something else is the dataset_dir's fault
        raise DataError(f"data.dataset_dir: {e}, or set another data.dataset_dir") from None


def open_training_data(cfg: DataConfig, vocab_size: int) -> TrainingData:
    """Open the prepared dataset and its tokenizer, and check that they match each other and that the model's
    `vocab_size` embeddings cover every id."""
    tok_dir, _ = tokenizer_location(cfg.dataset_dir, cfg.tokenizer_dir)
    tokenizer = load_tokenizer(tok_dir)
    dataset = TokenDataset(cfg.dataset_dir)
    check_compatible(dataset, tokenizer, vocab_size)
    return TrainingData(tok_dir, tokenizer, dataset)


def prepare_chat_data(cfg: DataConfig, tokenizer_dir: Path, info: Callable[[str], None] = print) -> None:
    """Encode the conversations of cfg.sources with the tokenizer in `tokenizer_dir` (which must have chat
    markers) into cfg.dataset_dir, unless it is up to date."""
    tokenizer = load_tokenizer(tokenizer_dir)
    _ = tokenizer.chat_token_ids  # no markers: one error saying how to add them, before any row is read
    try:
        prepare_chat_dataset(cfg.sources, cfg.dataset_dir, tokenizer, cfg.val_fraction, info)
    except SourceError as e:
        raise SourceError(f"data.sources: {e}") from None


def open_chat_data(cfg: DataConfig, tokenizer_dir: Path, vocab_size: int) -> TrainingData:
    """Open the prepared conversation dataset and check it against the tokenizer and the model's vocabulary."""
    tokenizer = load_tokenizer(tokenizer_dir)
    dataset = ChatDataset(cfg.dataset_dir)
    check_chat_compatible(dataset, tokenizer, vocab_size)
    return TrainingData(Path(tokenizer_dir), tokenizer, dataset)
