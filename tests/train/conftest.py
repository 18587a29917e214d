"""Fixtures for training tests: a small learnable corpus prepared once, and tiny run configs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.configio import apply_overrides
from train.config import Config, config_from_dict


def make_corpus(directory: Path, n_docs: int = 240, seed: int = 0) -> Path:
    """Write small Python-like files with a lot of regular structure, so a tiny model learns it fast."""
    rng = random.Random(seed)
    names = ["alpha", "beta", "gamma", "delta", "omega", "value", "count", "total", "index", "item"]
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(3, 6)):
            a, b = rng.sample(names, 2)
            k = rng.randint(0, 9)
            lines.append(f"def {a}_{k}({b}):\n    return {b} + {k}\n")
        (directory / f"doc_{i:04d}.py").write_text("\n".join(lines))
    return directory


@dataclass
class TinyData:
    corpus_dir: Path
    dataset_dir: Path
    tokenizer_dir: Path
    vocab_size: int


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """A prepared dataset (tokenizer with 384 ids, 10% validation) built from `make_corpus`."""
    from data.prepare_data import prepare_dataset

    root = tmp_path_factory.mktemp("train_data")
    corpus = make_corpus(root / "corpus")
    out = prepare_dataset([str(corpus)], root / "dataset", vocab_size=384, val_fraction=0.1, workers=1,
                          progress=False)
    return TinyData(corpus, out, out / "tokenizer", 384)


def tiny_config(out_dir: Path, data: TinyData, *overrides: str) -> Config:
    """A 2-layer model on `data`, 8 sequences of 32 tokens per step, logging every step, no TensorBoard."""
    raw = {
        "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": data.vocab_size,
                  "multiple_of": 32, "max_seq_len": 64},
        "data": {"sources": [str(data.corpus_dir)], "dataset_dir": str(data.dataset_dir), "val_fraction": 0.1,
                 "workers": 1},
        "train": {"out_dir": str(out_dir), "batch_size": 8, "micro_batch_size": 8, "seq_len": 32,
                  "max_steps": 20, "eval_interval": 10, "eval_batches": 2, "save_interval": 10, "log_interval": 1,
                  "sample_tokens": 8, "device": "cpu", "seed": 0},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "log": {"tensorboard": False, "progress": False},
    }
    cfg = config_from_dict(apply_overrides(raw, list(overrides)))
    cfg.validate()
    return cfg


def write_config(path: Path, cfg: Config) -> Path:
    cfg.save(path)
    return path
