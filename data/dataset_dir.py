"""Where a training config's dataset lives when it names no `data.dataset_dir`: a name that follows the data settings.

The default is out/datasets/<config name>-<8 hex digits>, the hex digits being a hash of the settings the dataset
is built from. Switching `data.sources` (or the vocabulary size, text field, ...) on the command line then prepares
a new dataset beside the old one instead of failing on it, and switching back finds the old one again. Settings
that do not change the result (the number of tokenizing workers) are left out; the split rule is in (a new
rule prepares a new dataset rather than failing on the old one). An explicit `data.dataset_dir` is
used as given, and prepare_data.py refuses it if it holds a dataset built from other inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.splits import SPLIT_RULE

DATASETS_ROOT = Path("out") / "datasets"  # under out/, not ./datasets/: that would shadow the HF package


def data_settings_hash(sources: list[str], vocab_size: int, tokenizer_dir: str | None, text_field: str,
                       val_fraction: float, tokenizer_sample_mb: int, extra: dict | None = None) -> str:
    """8 hex digits of sha256 over the settings (sources as written, in order); stable across runs and machines.
    `extra` (settings of other dataset kinds, e.g. conversations) joins the hash only when given."""
    settings = {"sources": [str(s) for s in sources], "vocab_size": vocab_size, "tokenizer_dir": tokenizer_dir,
                "text_field": text_field, "val_fraction": float(val_fraction),
                "tokenizer_sample_mb": tokenizer_sample_mb, "split_rule": SPLIT_RULE}
    if extra:
        settings["extra"] = extra
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def default_dataset_dir(config_name: str, sources: list[str], vocab_size: int, tokenizer_dir: str | None,
                        text_field: str, val_fraction: float, tokenizer_sample_mb: int,
                        extra: dict | None = None) -> Path:
    """out/datasets/<config_name>-<data_settings_hash(...)>."""
    digest = data_settings_hash(sources, vocab_size, tokenizer_dir, text_field, val_fraction, tokenizer_sample_mb,
                                extra)
    return DATASETS_ROOT / f"{config_name}-{digest}"
