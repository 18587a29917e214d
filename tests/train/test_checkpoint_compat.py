"""A checkpoint outlives the training options that wrote it: generation and export read only the model section;
resuming names what it cannot read and what to do instead."""

from __future__ import annotations

import pytest
import yaml
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError
from inference import Generator, SamplingParams
from model.checkpoint import RUN_CONFIG, WEIGHTS, find_checkpoint, format_version
from scripts.convert_hf import export_checkpoint
from train.trainer import train

from .conftest import tiny_config


@pytest.fixture
def old_run(tmp_path, tiny_data):
    """A trained run whose checkpoint is rewritten as format 1 with a training option this version lacks."""
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=3", "train.save_interval=3",
                      "train.eval_interval=3", "train.sample_tokens=0")
    train(cfg)
    ckpt = find_checkpoint(tmp_path / "run")
    saved = yaml.safe_load((ckpt / RUN_CONFIG).read_text())
    saved["train"]["removed_option"] = 7
    (ckpt / RUN_CONFIG).write_text(yaml.safe_dump(saved))
    save_file(load_file(str(ckpt / WEIGHTS)), str(ckpt / WEIGHTS), metadata={"format": "pt"})  # no version
    assert format_version(ckpt) == 1
    return cfg, ckpt


def test_old_checkpoint_still_generates_and_exports(tmp_path, old_run):
    _, ckpt = old_run
    gen = Generator.from_checkpoint(tmp_path / "run", device="cpu")
    done = gen.generate("def ", 5, SamplingParams(temperature=0.0))
    assert len(done[0].token_ids) >= 1
    out = export_checkpoint(ckpt, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_resuming_it_names_the_unknown_key_and_the_way_out(old_run):
    cfg, ckpt = old_run
    cfg.train.max_steps = 6
    with pytest.raises(CheckpointError) as info:
        train(cfg)
    message = str(info.value)
    assert "train.removed_option" in message
    assert f"train.init_from={ckpt}" in message
