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

import errno
import json
import shutil
from pathlib import Path

import torch

from core.atomic import atomic_directory, write_text_atomic
from core.configio import load_yaml_tree
from core.errors import CheckpointError, ConfigError
from model.checkpoint import LATEST, RUN_CONFIG, TOKENIZER, read_weights, save_weights
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
    bad = non_finite(weights, trainer_state.get("optimizer"))
    if bad:
        raise NonFiniteState(f"not saving step {step}: {bad} holds non-finite values; the newest checkpoint "
                             f"stays {_latest_name(ckpts)}")
    try:
        with atomic_directory(final) as tmp:
            save_weights(tmp, weights, model_cfg)
            cfg.save(tmp / RUN_CONFIG)
            torch.save(trainer_state, tmp / STATE)
            if tokenizer_dir is not None:
                shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
            (tmp / META).write_text(json.dumps({"step": step, "val_loss": val_loss}))
        write_text_atomic(ckpts / LATEST, final.name)
    except Exception as e:  # torch and safetensors report a full disk as their own errors, not OSError
        raise _disk_error(e, final) from e
    _prune(ckpts, keep_last)
    return final


class NonFiniteState(CheckpointError):
    """The state to save holds NaN or inf: it is not written, so the newest checkpoint stays a good one."""


def non_finite(weights: dict[str, torch.Tensor], optimizer_state: dict | None) -> str | None:
    """The name of the first weight or optimizer state tensor with a NaN or inf, or None."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"weight {name}"
    for name, slots in ((optimizer_state or {}).get("state") or {}).items():
        for slot, tensor in slots.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"optimizer state {name}.{slot}"
    return None


def _latest_name(ckpts: Path) -> str:
    pointer = ckpts / LATEST
    return pointer.read_text().strip() if pointer.is_file() else "(none yet)"


def _disk_error(error: Exception, target: Path) -> Exception:
    """A CheckpointError naming the disk when writing `target` failed for lack of space; else `error` itself."""
    where = target.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error) or (
        free is not None and free < 64 * 2**20)
    if isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return CheckpointError(f"cannot write checkpoint {target}: {error.strerror}; the previous checkpoint "
                               "is intact")
    if not full:
        return error
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    return CheckpointError(f"no space left on the device holding {where} ({left}) while writing checkpoint "
                           f"{target.name}: free some space or move train.out_dir; the previous checkpoint is intact")


def _val_loss(ckpt_dir: Path) -> float | None:
    """The validation loss meta.json records; None when it has none or is torn (a crash while writing it)."""
    try:
        value = json.loads((ckpt_dir / META).read_text()).get("val_loss")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, (int, float)) else None


def _prune(ckpts: Path, keep_last: int) -> None:
    done = sorted(p for p in ckpts.glob("step_*") if (p / META).is_file())
    scored = [(v, p) for p in done if (v := _val_loss(p)) is not None]
    keep = set(done[-keep_last:])
    if scored:
        best = min(scored)[1]
        keep.add(best)
        write_text_atomic(ckpts / BEST, best.name)
    for path in done:
        if path not in keep:
            shutil.rmtree(path)
    # Left by a process killed while saving (the run directory's lock means no other writer is at work here).
    for stale in ckpts.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in ckpts.glob(".*.tmp"):  # a `latest` pointer that was never renamed into place
        stale.unlink(missing_ok=True)


def load_training_state(ckpt_dir: Path) -> dict:
    """The trainer state saved beside the weights (plain tensors and containers; weights_only=True)."""
    path = Path(ckpt_dir) / STATE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {STATE}: it holds weights only and cannot resume training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle calling what weights_only refuses, ...
        # torch's own message suggests weights_only=False, which would run code from the file: never pass it on.
        raise CheckpointError(f"{path} cannot be loaded safely: it is truncated, corrupt, or holds more than plain "
                              f"tensors and containers ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"step", "loader", "rng"} <= state.keys():
        raise CheckpointError(f"{path} is not a trainer state (its step, loader and RNG states are missing)")
    optim_state = state.get("optimizer")
    if optim_state is not None and any(not isinstance(k, str) for k in optim_state.get("state", {})):
        raise CheckpointError(f"{path} keys the optimizer state by position, not by parameter name (an older "
                              "format): it cannot be resumed")
    return state


def load_resumable(ckpt_dir: Path) -> dict:
    """Check that everything a resume reads loads (run config, weights, trainer state); returns the state."""
    load_run_config(ckpt_dir)
    read_weights(ckpt_dir)
    return load_training_state(ckpt_dir)


def newest_loadable(ckpts: Path) -> tuple[Path, dict, list[tuple[Path, str]]] | None:
    """(checkpoint, trainer state, [(skipped checkpoint, why)]) for the newest checkpoint under `ckpts` that loads
    completely, `latest` first; None when there is none at all. When every one is broken that is an error: a new
    run would replace them."""
    candidates = sorted((p for p in ckpts.glob("step_*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    pointer = ckpts / LATEST
    if pointer.is_file() and (ckpts / pointer.read_text().strip()).is_dir():
        latest = ckpts / pointer.read_text().strip()
        candidates = [latest] + [p for p in candidates if p != latest]
    skipped = []
    for path in candidates:
        try:
            return path, load_resumable(path), skipped
        except CheckpointError as e:
            skipped.append((path, str(e)))
    if skipped:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise CheckpointError(f"no checkpoint in {ckpts} loads ({reasons}): fix or remove them, or set "
                              "train.resume=never with another train.out_dir")
    return None
