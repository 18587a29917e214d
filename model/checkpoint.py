"""A model checkpoint: weights, the model's own config and the tokenizer, readable without any training option.

    CKPT_DIR/
      model.safetensors   weights with Meta Llama names, saved from the uncompiled model; a tied output head is
                          stored once, as tok_embeddings.weight. The safetensors header metadata holds the
                          format version and the model config (JSON), so the file alone rebuilds the model.
      tokenizer/          the tokenizer the model was trained with (opaque to this layer: copied, not read)

A training checkpoint is the same directory plus files that only train/ reads (config.yaml with the whole run
config, trainer_state.pt, meta.json; see train/checkpoint.py). Generation, export and evaluation use this module
and never parse training options, so renaming a training option never makes old checkpoints unloadable.

Format versions (FORMAT_VERSION is what this code writes; `_migrate` reads every older one, in one place):
  1  no version in the metadata; the model config is the `model:` section of the run's config.yaml
  2  metadata {"mini_llm.format_version": "2", "mini_llm.model_config": "{...json...}"}
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.atomic import atomic_directory, mark_output_dir
from core.configio import build, load_yaml_tree
from core.errors import CheckpointError, ConfigError
from core.memory import require_memory
from model.config import ModelConfig
from model.transformer import Transformer

FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
RUN_CONFIG = "config.yaml"  # format 1 kept the model config here; still written beside training checkpoints
LATEST = "latest"  # in a run's checkpoints/ folder: the name of the newest complete checkpoint
_VERSION_KEY = "mini_llm.format_version"
_CONFIG_KEY = "mini_llm.model_config"
TIED_HEAD = "output.weight"  # absent from saved weights when model.tie_embeddings: it is the embedding
EMBEDDING = "tok_embeddings.weight"


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


# ---- tied head: the one place that knows a tied output head is the embedding ----------------------------------


def drop_tied_head(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights to store: without the output head when it is tied to the embedding."""
    return {k: v for k, v in state.items() if not (cfg.tie_embeddings and k == TIED_HEAD)}


def restore_tied_head(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Stored weights ready for load_state_dict: a tied head points at the embedding."""
    state = dict(state)
    if cfg.tie_embeddings and EMBEDDING in state:
        state.setdefault(TIED_HEAD, state[EMBEDDING])
    return state


def check_weights(cfg: ModelConfig, expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor],
                  source: str) -> None:
    """CheckpointError unless stored weights `state` have exactly the names and shapes in `expected` (a tied head
    is neither expected nor allowed to be missing)."""
    expected = {k: v for k, v in expected.items() if not (cfg.tie_embeddings and k == TIED_HEAD)}
    state = drop_tied_head(state, cfg)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in sorted(expected.keys() & state.keys())
             if tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{name} {items}" for name, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise CheckpointError(f"{source} does not match the model config: {'; '.join(parts)}")


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights to save: unwraps torch.compile, drops the tied head and non-persistent buffers, and makes every
    tensor contiguous on the CPU."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu").contiguous() for k, v in drop_tied_head(model.state_dict(), model.cfg).items()}


# ---- reading and writing ----------------------------------------------------------------------------------------


def save_weights(directory: str | Path, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Write model.safetensors (tied head dropped) with the format version and model config in its metadata."""
    metadata = {"format": "pt", _VERSION_KEY: str(FORMAT_VERSION),
                _CONFIG_KEY: json.dumps(dataclasses.asdict(cfg))}
    save_file(drop_tied_head(state, cfg), str(Path(directory) / WEIGHTS), metadata=metadata)


def _metadata(ckpt_dir: Path) -> dict[str, str]:
    path = ckpt_dir / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _migrate(version: int, metadata: dict[str, str], ckpt_dir: Path) -> dict:
    """The model config, as a dict in the current format, of a checkpoint written in format `version`."""
    if version == 1:  # the model section of the run config; the training sections are never parsed
        if not (ckpt_dir / RUN_CONFIG).is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} has no format version and no {RUN_CONFIG} to read the "
                                  "model config from")
        try:
            model = load_yaml_tree(ckpt_dir / RUN_CONFIG).get("model")
        except ConfigError as e:
            raise CheckpointError(f"checkpoint {ckpt_dir}: {e}") from None
        if not isinstance(model, dict):
            raise CheckpointError(f"checkpoint {ckpt_dir}: {RUN_CONFIG} has no model section")
        return model
    try:
        model = json.loads(metadata[_CONFIG_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {ckpt_dir}: {WEIGHTS} has no readable model config") from None
    if not isinstance(model, dict):
        raise CheckpointError(f"checkpoint {ckpt_dir}: the model config in {WEIGHTS} is not a mapping")
    return model


def format_version(ckpt_dir: str | Path) -> int:
    """The format version a checkpoint was written in (1 when it records none)."""
    ckpt_dir = Path(ckpt_dir)
    text = _metadata(ckpt_dir).get(_VERSION_KEY, "1")
    if not text.isdigit():
        raise CheckpointError(f"checkpoint {ckpt_dir}: format version {text!r} is not a number")
    return int(text)


def read_model_config(ckpt_dir: str | Path) -> ModelConfig:
    """The checkpoint's model config (validated), whatever format version wrote it."""
    ckpt_dir = Path(ckpt_dir)
    version = format_version(ckpt_dir)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt_dir} has format version {version}, newer than this version of "
                              f"mini-llm reads (up to {FORMAT_VERSION}): update mini-llm to load it")
    raw = _migrate(version, _metadata(ckpt_dir), ckpt_dir)
    try:
        cfg = build(ModelConfig, raw, "model.")
        cfg.validate(prefix="model.")
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: bad model config: {e}") from None
    return cfg


def read_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors as a CPU state dict (a tied head absent)."""
    path = Path(ckpt_dir) / WEIGHTS
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path}: {e}") from None


def load_weights_into(model: Transformer, ckpt_dir: str | Path) -> None:
    """Load model.safetensors into a model of the matching shape (strict, up to the tied head)."""
    state = read_weights(ckpt_dir)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_weights(model.cfg, expected, state, str(Path(ckpt_dir) / WEIGHTS))
    model.load_state_dict(restore_tied_head(state, model.cfg), strict=True)


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, Path]:
    """Rebuild the model from a checkpoint (or run directory): (model in eval mode, checkpoint directory).

    The model's config is `model.cfg`; the tokenizer, when saved, is `ckpt_dir / TOKENIZER`."""
    ckpt_dir = find_checkpoint(path)
    cfg = read_model_config(ckpt_dir)
    check_fits(ckpt_dir, cfg, torch.device(device))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent RoPE tables; weights are overwritten next
    load_weights_into(model, ckpt_dir)
    return model.to(dtype=dtype).eval(), ckpt_dir


def check_fits(ckpt_dir: Path, cfg: ModelConfig, device: torch.device) -> None:
    """CheckpointError, before anything is allocated, when loading would not fit: the model is materialized in
    fp32 on `device` (then cast), while the weights file is read into host memory."""
    params = 4 * cfg.num_params()
    file = (ckpt_dir / WEIGHTS).stat().st_size
    advice = "use a machine with more memory" + ("" if device.type == "cuda" else ", or load it onto a GPU")
    what = f"checkpoint {ckpt_dir} ({cfg.num_params() / 1e9:.3g}B parameters)"
    if device.type == "cpu":
        require_memory(params + file, device, what, advice, CheckpointError)
    else:
        require_memory(file, torch.device("cpu"), what, advice, CheckpointError)
        require_memory(params, device, what, advice, CheckpointError)


def save_model_checkpoint(directory: str | Path, model: torch.nn.Module, tokenizer_dir: str | Path | None = None,
                          written_by: str | None = None) -> Path:
    """Write a weights checkpoint (weights + model config, and the tokenizer when given) atomically; `written_by`
    names the tool, so that its --overwrite may later replace it (core.atomic.check_output_dir)."""
    with atomic_directory(directory) as tmp:
        save_weights(tmp, model_state_dict(model), getattr(model, "_orig_mod", model).cfg)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
        if written_by is not None:
            mark_output_dir(tmp, written_by)
    return Path(directory)
