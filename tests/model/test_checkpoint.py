"""The model checkpoint format: versioned, readable with the model section alone, older formats migrated."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from core.errors import CheckpointError
from model import ModelConfig, Transformer
from model.checkpoint import (
    FORMAT_VERSION,
    RUN_CONFIG,
    WEIGHTS,
    format_version,
    load_model,
    model_state_dict,
    read_model_config,
    save_model_checkpoint,
)
from tests.helpers import randomize

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16, max_seq_len=32,
                  tie_embeddings=True)


def _model(cfg: ModelConfig = CFG) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(cfg)
    randomize(model, 0)
    return model


def _logits(model: Transformer) -> torch.Tensor:
    tokens = torch.arange(12).reshape(2, 6) % model.cfg.vocab_size
    with torch.no_grad():
        return model.eval()(tokens)


def test_round_trip_records_version_and_model_config(tmp_path):
    model = _model()
    save_model_checkpoint(tmp_path / "ckpt", model)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [WEIGHTS]  # no run config needed
    with safe_open(str(tmp_path / "ckpt" / WEIGHTS), framework="pt") as f:
        meta = f.metadata()
        assert "output.weight" not in set(f.keys())  # the tied head is stored once, as the embedding
    assert int(meta["mini_llm.format_version"]) == FORMAT_VERSION == format_version(tmp_path / "ckpt")
    assert read_model_config(tmp_path / "ckpt") == CFG
    loaded, ckpt_dir = load_model(tmp_path / "ckpt")
    assert ckpt_dir == tmp_path / "ckpt" and loaded.cfg == CFG
    assert loaded.output.weight is loaded.tok_embeddings.weight
    assert torch.equal(_logits(loaded), _logits(model))


def _write_format_1(directory, model: Transformer, run_config: dict) -> None:
    """A checkpoint as format 1 wrote it: no version, the whole run config in config.yaml."""
    directory.mkdir()
    save_file(model_state_dict(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / RUN_CONFIG).write_text(yaml.safe_dump(run_config))


def test_format_1_is_migrated_without_reading_training_options(tmp_path):
    """A run config holding a training key that no longer exists (and a section nobody knows) still loads."""
    model = _model()
    run_config = {"model": dataclasses.asdict(CFG), "train": {"removed_option": 3, "max_steps": 10},
                  "optim": {"lr": 1e-3}, "some_future_section": {"x": 1}}
    _write_format_1(tmp_path / "old", model, run_config)
    assert format_version(tmp_path / "old") == 1
    loaded, _ = load_model(tmp_path / "old")
    assert loaded.cfg == CFG
    assert torch.equal(_logits(loaded), _logits(model))


def test_newer_format_is_one_clear_error(tmp_path):
    model = _model()
    (tmp_path / "new").mkdir()
    save_file(model_state_dict(model), str(tmp_path / "new" / WEIGHTS),
              metadata={"mini_llm.format_version": str(FORMAT_VERSION + 1),
                        "mini_llm.model_config": json.dumps(dataclasses.asdict(CFG))})
    with pytest.raises(CheckpointError, match=rf"format version {FORMAT_VERSION + 1}, newer .*update mini-llm"):
        load_model(tmp_path / "new")


def test_config_that_disagrees_with_weights_names_the_tensor(tmp_path):
    model = _model()
    save_model_checkpoint(tmp_path / "ckpt", model)
    wider = dataclasses.asdict(CFG) | {"vocab_size": 101}
    state = model_state_dict(model)
    save_file(state, str(tmp_path / "ckpt" / WEIGHTS),
              metadata={"mini_llm.format_version": str(FORMAT_VERSION), "mini_llm.model_config": json.dumps(wider)})
    with pytest.raises(CheckpointError, match=r"tok_embeddings\.weight \(97, 32\) \(expected \(101, 32\)\)"):
        load_model(tmp_path / "ckpt")


def test_unknown_model_key_is_a_checkpoint_error(tmp_path):
    model = _model()
    _write_format_1(tmp_path / "old", model, {"model": dataclasses.asdict(CFG) | {"n_experts": 8}})
    with pytest.raises(CheckpointError, match=r"unknown config key 'model\.n_experts'"):
        load_model(tmp_path / "old")


def test_untied_head_round_trip(tmp_path):
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    model = _model(cfg)
    save_model_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.output.weight is not loaded.tok_embeddings.weight
    assert torch.equal(loaded.output.weight, model.output.weight)
