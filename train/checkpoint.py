"""Checkpoint directory format, shared by training, generation and the Hugging Face converter.

    OUT_DIR/                          a training run (train.out_dir)
      config.yaml                     resolved config of the run
      metrics.jsonl
      checkpoints/
        latest                        text file: name of the newest complete checkpoint
        step_0000100/                 one checkpoint (any directory of this shape is a checkpoint)
          model.safetensors           weights, Meta Llama names, saved from the uncompiled model; a tied
                                      output head is stored once, as tok_embeddings.weight
          config.yaml                 resolved config (model section is enough to rebuild the model)
          tokenizer/                  the tokenizer the model was trained with (when there is one)
          trainer_state.pt            optimizer, scheduler, scaler, loader, RNGs, step (training only;
                                      plain tensors and dicts, loaded with weights_only=True)

Every checkpoint is written into a temporary sibling directory and renamed into place, so a crash while
saving never leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.atomic import atomic_directory, write_text_atomic
from core.errors import CheckpointError, ConfigError
from model import Transformer
from train.config import Config, config_from_dict, load_yaml_tree

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer"
LATEST = "latest"


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a checkpoint directory, a run's out_dir (its latest checkpoint) or its checkpoints/ folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if (path / WEIGHTS).is_file():
        return path
    for ckpts in (path / "checkpoints", path):
        pointer = ckpts / LATEST
        if pointer.is_file():
            target = ckpts / pointer.read_text().strip()
            if (target / WEIGHTS).is_file():
                return target
            raise CheckpointError(f"{pointer} points to {target}, which holds no {WEIGHTS}")
    raise CheckpointError(
        f"{path} is not a checkpoint: expected {WEIGHTS} in it, or a run directory with checkpoints/{LATEST}"
    )


def load_checkpoint_config(ckpt_dir: str | Path) -> Config:
    """The resolved Config stored beside the weights."""
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {CONFIG}")
    try:
        return config_from_dict(load_yaml_tree(path))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: bad {CONFIG}: {e}") from None


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights to save: unwraps torch.compile, drops the tied head (it is the embedding) and non-persistent
    buffers, and makes every tensor contiguous on the CPU."""
    model = getattr(model, "_orig_mod", model)
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("output.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_weights(directory: str | Path, model: torch.nn.Module, cfg: Config) -> None:
    """Write model.safetensors and config.yaml into an existing directory."""
    directory = Path(directory)
    save_file(model_state_dict(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    cfg.save(directory / CONFIG)


def load_weights_into(model: Transformer, ckpt_dir: str | Path) -> None:
    """Load model.safetensors into a model of the matching shape (strict, up to the tied head)."""
    path = Path(ckpt_dir) / WEIGHTS
    state = read_weights(ckpt_dir)
    if model.cfg.tie_embeddings and "tok_embeddings.weight" in state:
        state.setdefault("output.weight", state["tok_embeddings.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Transformer, Config, Path]:
    """Rebuild the model from a checkpoint (or run directory); returns (model in eval mode, config, ckpt dir)."""
    ckpt_dir = find_checkpoint(path)
    cfg = load_checkpoint_config(ckpt_dir)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent RoPE tables; weights are overwritten next
    load_weights_into(model, ckpt_dir)
    return model.to(dtype=dtype).eval(), cfg, ckpt_dir


def save_model_checkpoint(directory: str | Path, model: torch.nn.Module, cfg: Config,
                          tokenizer_dir: str | Path | None = None) -> Path:
    """Write a weights-only checkpoint (weights, config, tokenizer) atomically; used by the converter."""
    with atomic_directory(directory) as tmp:
        save_weights(tmp, model, cfg)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
    return Path(directory)


# ---- training checkpoints ----------------------------------------------------------------------------------

STATE = "trainer_state.pt"
META = "meta.json"
BEST = "best"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    weights: dict[str, torch.Tensor],
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
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg.save(tmp / CONFIG)
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


def read_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors as a CPU state dict."""
    path = Path(ckpt_dir) / WEIGHTS
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path}: {e}") from None
