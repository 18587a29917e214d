"""The world every bad-input case runs against, built once: a corpus, a prepared dataset, a real two-step training
run (its checkpoint, metrics and config), a Hugging Face export of that checkpoint, and two broken checkpoints."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model import ModelConfig, Transformer
from model.checkpoint import TOKENIZER, find_checkpoint, save_weights
from tests.train.conftest import (
    TinyData,
    make_corpus,
    tiny_config,
    tiny_data,  # noqa: F401  (a fixture for the other fault tests, registered by being imported here)
)


@dataclass(frozen=True)
class World:
    """Read-only inputs shared by the cases (no case may change anything under `root`)."""

    root: Path
    corpus: Path  # a directory of small .py files
    dataset: Path  # a dataset prepared from `corpus` (384-id tokenizer inside)
    tokenizer: Path  # that tokenizer
    run: Path  # a training run directory (metrics.jsonl, checkpoints/)
    ckpt: Path  # its latest checkpoint
    hf: Path  # the checkpoint exported to a Hugging Face directory
    mismatched: Path  # a checkpoint whose recorded model config (that of `ckpt`) disagrees with its weights
    huge: Path  # a checkpoint whose model config describes a model far larger than any machine's memory
    data: TinyData

    def placeholders(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "data"}


def _mismatched_checkpoint(ckpt: Path, out: Path, **changes) -> Path:
    """A copy of `ckpt` that keeps its recorded model config but holds the weights of a model with `changes`."""
    from model.checkpoint import model_state_dict, read_model_config

    out.mkdir(parents=True)
    shutil.copytree(ckpt / TOKENIZER, out / TOKENIZER)
    cfg = read_model_config(ckpt)
    with torch.device("meta"):
        other = Transformer(dataclasses.replace(cfg, **changes))
    other.to_empty(device="cpu")
    other.init_weights()
    save_weights(out, model_state_dict(other), cfg)
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from data.prepare_data import prepare_dataset
    from scripts.convert_hf import export_checkpoint
    from train.trainer import train

    root = tmp_path_factory.mktemp("world")
    corpus = make_corpus(root / "corpus", n_docs=60)
    dataset = prepare_dataset([str(corpus)], root / "dataset", vocab_size=384, val_fraction=0.1, workers=1,
                              progress=False)
    data = TinyData(corpus, dataset, dataset / "tokenizer", 384)
    cfg = tiny_config(root / "run", data, "train.max_steps=2", "train.save_interval=2", "train.eval_interval=2",
                      "train.eval_batches=1", "train.sample_tokens=0", "optim.warmup_steps=1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    ckpt = find_checkpoint(root / "run")
    hf = export_checkpoint(ckpt, root / "hf")
    mismatched = _mismatched_checkpoint(ckpt, root / "mismatched", vocab_size=400)
    # Far beyond any machine (about 8e14 parameters), yet the file is tiny: only its header describes the model.
    huge = root / "huge"
    huge.mkdir()
    shutil.copytree(ckpt / TOKENIZER, huge / TOKENIZER)
    big = ModelConfig(dim=2**20, n_layers=64, n_heads=4, vocab_size=384)
    with torch.device("meta"):
        Transformer(big)  # the config is buildable: only its size is the problem
    save_weights(huge, {"tok_embeddings.weight": torch.zeros(1)}, big)
    return World(root, corpus, dataset, data.tokenizer_dir, root / "run", ckpt, hf, mismatched, huge, data)
