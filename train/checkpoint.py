"""Training checkpoints: a model checkpoint (model/checkpoint.py) plus what only training reads.

    OUT_DIR/                          a training run (train.out_dir)
      config.yaml                     resolved config of the run
      metrics.jsonl
      checkpoints/
        latest                        text file: name of the newest complete checkpoint
        best                          text file: name of the checkpoint with the lowest validation loss
        step_0000100/                 one checkpoint
          model.safetensors           weights + model config + format version (model/checkpoint.py)
          tokenizer/                  the tokenizer the model was trained with
          config.yaml                 the whole run config (read only to resume)
          trainer_state.pt            optimizer, scheduler, scaler, loader, RNGs, step (plain tensors and dicts,
                                      loaded with weights_only=True)
          meta.json                   {"step", "val_loss"}: what pruning and `best` compare

Every checkpoint is written into a temporary sibling directory and renamed into place, so a crash while
saving never leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from core.atomic import atomic_directory, write_text_atomic
from core.configio import load_yaml_tree
from core.errors import CheckpointError, ConfigError
from model.checkpoint import LATEST, RUN_CONFIG, TOKENIZER, save_weights
from model.config import ModelConfig
from train.config import Config, config_from_dict

STATE = "trainer_state.pt"
META = "meta.json"
BEST = "best"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def load_run_config(ckpt_dir: Path) -> Config:
    """The run config saved beside a checkpoint, parsed strictly: resuming needs every training option to mean
    what it meant when the checkpoint was written."""
    path = Path(ckpt_dir) / RUN_CONFIG
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {RUN_CONFIG}: it holds weights only and cannot resume "
                              f"training (use train.init_from={ckpt_dir} to start from its weights)")
    try:
        return config_from_dict(load_yaml_tree(path))
    except ConfigError as e:
        raise CheckpointError(
            f"cannot resume from {ckpt_dir}: its {RUN_CONFIG} does not fit this version's options ({e}); start a "
            f"new run from its weights with train.init_from={ckpt_dir} (fresh optimizer) in another train.out_dir"
        ) from None


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    cfg: Config,
    trainer_state: dict,
    tokenizer_dir: Path | None,
    val_loss: float | None,
    keep_last: int,
) -> Path:
    """Write checkpoints/step_NNNNNNN atomically, point `latest` at it, and prune old ones.

    Kept: the newest `keep_last` step checkpoints plus the one with the lowest validation loss (`best`).
    """
    ckpts = Path(out_dir) / "checkpoints"
    final = ckpts / step_dir_name(step)
    with atomic_directory(final) as tmp:
        save_weights(tmp, weights, model_cfg)
        cfg.save(tmp / RUN_CONFIG)
        torch.save(trainer_state, tmp / STATE)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
        (tmp / META).write_text(json.dumps({"step": step, "val_loss": val_loss}))
    write_text_atomic(ckpts / LATEST, final.name)
    _prune(ckpts, keep_last)
    return final


def _prune(ckpts: Path, keep_last: int) -> None:
    done = sorted(p for p in ckpts.glob("step_*") if (p / META).is_file())
    scored = [(json.loads((p / META).read_text())["val_loss"], p) for p in done]
    scored = [(v, p) for v, p in scored if v is not None]
    keep = set(done[-keep_last:])
    if scored:
        best = min(scored)[1]
        keep.add(best)
        write_text_atomic(ckpts / BEST, best.name)
    for path in done:
        if path not in keep:
            shutil.rmtree(path)
    for stale in ckpts.glob(".tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def load_training_state(ckpt_dir: Path) -> dict:
    """The trainer state saved beside the weights (plain tensors and containers; weights_only=True)."""
    path = Path(ckpt_dir) / STATE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {STATE}: it holds weights only and cannot resume training")
    return torch.load(path, map_location="cpu", weights_only=True)
