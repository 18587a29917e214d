"""Typed run configuration.

Loading is: YAML file (with optional `base:` inheritance, deep-merged) -> dotted `key=value` overrides from the
command line (values typed by YAML rules) -> one dataclass per section (an unknown key is an error suggesting the
closest valid key; a wrong type names key, value and expected type) -> `Config.validate()` for cross-field rules.
Every field is documented once, where it is declared.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError
from model.config import ModelConfig


@dataclass
class DataConfig:
    """Where the training text comes from and where its tokenized form lives."""

    # files, directories, globs, hf:NAME[:CONFIG][@SPLIT], or builtin:python-stdlib
    sources: list[str] = field(default_factory=lambda: ["builtin:python-stdlib"])
    dataset_dir: str | None = None  # prepared shards + manifest.json; None: out/datasets/<config name>
    # SentencePiece model directory; None: <dataset_dir>/tokenizer, trained with model.vocab_size when missing
    tokenizer_dir: str | None = None
    text_field: str = "text"  # field holding the text in .jsonl / .parquet sources
    val_fraction: float = 0.005  # fraction of documents held out for validation (chosen per document, deterministic)
    workers: int = 0  # tokenization processes; 0 means all cores
    tokenizer_sample_mb: int = 64  # MB of text sampled to train the tokenizer (bounds its memory)


@dataclass
class TrainConfig:
    """The training loop: batch geometry, length, evaluation, checkpoints, and execution options."""

    out_dir: str | None = None  # run directory; None: out/<config file name>
    seed: int = 1337  # seeds model init, data order and dropout
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPUs that support it, else fp32
    batch_size: int = 32  # global batch in sequences per optimizer step (all ranks, all micro batches)
    micro_batch_size: int = 8  # sequences per forward pass on one rank; accumulation steps are derived
    seq_len: int = 256  # tokens per training sequence (<= model.max_seq_len)
    max_steps: int = 1000  # optimizer steps; the LR schedule spans them
    stop_at_step: int | None = None  # save and exit after this step (split a long run into shorter jobs)
    eval_interval: int = 200  # evaluate every N steps (and at the end)
    eval_batches: int = 20  # validation batches (of batch_size sequences) per evaluation
    save_interval: int = 500  # checkpoint every N steps (and at the end)
    keep_last: int = 2  # step checkpoints kept, besides the best by validation loss
    resume: str = "auto"  # auto: latest checkpoint in out_dir if any; never: refuse a non-empty out_dir; or a path
    init_from: str | None = None  # start from these weights (checkpoint or run dir; e.g. an imported HF model)
    #                               with a fresh optimizer at step 0; ignored when resuming
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute block activations in backward to save memory
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when launched with several processes
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    log_interval: int = 10  # write a metrics record every N steps
    sample_prompt: str = "def "  # prompt for the sample printed at each evaluation
    sample_tokens: int = 64  # tokens generated for that sample


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (counted in optimizer steps)."""

    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # final learning rate of the decay
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # after warmup: cosine, warmup-stable-decay, or flat
    warmup_steps: int = 100  # linear warmup: lr * (step + 1) / warmup_steps, reaching lr at the last warmup step
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent in the final linear decay
    weight_decay: float = 0.1  # applied to matrices only
    decay_embeddings: bool = False  # also decay the embedding table
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    fused: bool | None = None  # fused AdamW kernel; None: on for CUDA


@dataclass
class LogConfig:
    """Where metrics go."""

    tensorboard: bool = True  # TensorBoard events in out_dir/tb
    wandb: bool = False  # Weights & Biases (respects WANDB_MODE=offline)
    wandb_project: str = "mini-llm"
    wandb_run_name: str | None = None  # None: the out_dir name
    progress: bool = True  # tqdm progress bar
    peak_tflops: float | None = None  # dense bf16 peak per device for MFU; None: looked up from the GPU name


@dataclass
class Config:
    """The whole run, one attribute per YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro batches per rank per optimizer step: batch_size / (micro_batch_size * world_size)."""
        return self.train.batch_size // (self.train.micro_batch_size * world_size)

    def validate(self, world_size: int = 1) -> None:
        """Check cross-field rules; raise ConfigError naming the offending keys."""
        try:
            self.model.validate(prefix="model.")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        t, o, d = self.train, self.optim, self.data
        for key in ("batch_size", "micro_batch_size", "seq_len", "max_steps", "eval_interval", "eval_batches",
                    "save_interval", "keep_last", "max_bad_steps", "log_interval"):
            if getattr(t, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
        if t.stop_at_step is not None and t.stop_at_step <= 0:
            raise ConfigError(f"train.stop_at_step must be positive, got {t.stop_at_step}")
        if not 0 <= t.sample_tokens < self.model.max_seq_len:
            raise ConfigError(
                f"train.sample_tokens must be in [0, model.max_seq_len={self.model.max_seq_len}), got {t.sample_tokens}"
            )
        if t.sample_tokens and not t.sample_prompt:
            raise ConfigError("train.sample_prompt must not be empty (or set train.sample_tokens=0 for no sample)")
        if t.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len ({t.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        per_step = t.micro_batch_size * world_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size ({t.batch_size}) must be divisible by train.micro_batch_size "
                f"({t.micro_batch_size}) x {world_size} data-parallel rank(s) = {per_step}"
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device):
            raise ConfigError(f"train.device must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")
        if not t.resume:
            raise ConfigError("train.resume must be auto, never, or a checkpoint path")
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {o.lr}")
        if not 0 <= o.min_lr <= o.lr:
            raise ConfigError(f"optim.min_lr ({o.min_lr}) must be between 0 and optim.lr ({o.lr})")
        if o.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        if o.warmup_steps >= t.max_steps:
            raise ConfigError(
                f"optim.warmup_steps ({o.warmup_steps}) must be shorter than train.max_steps ({t.max_steps})"
            )
        if o.schedule == "wsd":
            if not 0 < o.decay_fraction <= 1:
                raise ConfigError(f"optim.decay_fraction must be in (0, 1], got {o.decay_fraction}")
            decay_steps = int(o.decay_fraction * t.max_steps)
            if o.warmup_steps + decay_steps > t.max_steps:
                raise ConfigError(
                    f"optim.warmup_steps ({o.warmup_steps}) + decay steps ({decay_steps} = optim.decay_fraction "
                    f"x train.max_steps) exceed train.max_steps ({t.max_steps})"
                )
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(o, key) < 1:
                raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(o, key)}")
        for key in ("weight_decay", "grad_clip"):
            if getattr(o, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(o, key)}")
        if o.eps <= 0:
            raise ConfigError(f"optim.eps must be positive, got {o.eps}")
        if not d.sources:
            raise ConfigError("data.sources must name at least one source")
        if not 0 <= d.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
        if d.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {d.workers}")
        if d.tokenizer_sample_mb <= 0:
            raise ConfigError(f"data.tokenizer_sample_mb must be positive, got {d.tokenizer_sample_mb}")
        if self.log.peak_tflops is not None and self.log.peak_tflops <= 0:
            raise ConfigError(f"log.peak_tflops must be positive, got {self.log.peak_tflops}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


# ---- YAML ----------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`, which nobody writes)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings _Loader reads as floats, so a saved '1e5' reloads as a string."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_tree(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, resolving `base:` (a path relative to the file, or a list of them) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(str(p) for p in (*_chain, resolved))}")
    raw = parse_yaml(path.read_text(), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a path or a list of paths, got {base!r}")
        merged = _deep_merge(merged, load_yaml_tree(path.parent / base, (*_chain, resolved)))
    return _deep_merge(merged, raw)


# ---- overrides -----------------------------------------------------------------------------------------------


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a raw config dict; values are parsed as YAML."""
    raw = _deep_merge({}, raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value (for example train.max_steps=200)")
        value = parse_yaml(text, f"override {key}")
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent, or an empty section (`train:` with every key commented out)
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
            node[part] = node = dict(child)  # copy on write: the caller's nested dicts stay untouched
        node[parts[-1]] = value
    return raw


# ---- dict -> dataclasses -------------------------------------------------------------------------------------


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str) -> ConfigError:
    """Suggest, in order: a similar key of the same section (`model.eps` -> `model.norm_eps`), the same key in
    another section (`train.lr` -> `optim.lr`), or the closest key anywhere."""
    valid = _all_keys(Config) + [f.name for f in dataclasses.fields(Config)]
    section, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    close = close or [s for s in siblings if len(leaf) >= 3 and (leaf in s or s in leaf)][:1]
    guesses = [f"{section}.{close[0]}" if section else close[0]] if close else []
    guesses = guesses or [k for k in valid if k.rpartition(".")[2] == leaf]
    guesses = guesses or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        expected = " or ".join(_type_name(a) for a in args).replace("NoneType", "null")
        raise ConfigError(f"config key '{key}' expects {expected}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if isinstance(value, str) and args == (str,):
            value = [value]  # `data.sources=file.txt` on the command line means a one-item list
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r} ({type(value).__name__})")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config field type {tp} for {key}")
    if not ok:
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return float(value) if tp is float else value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise _unknown_key(f"{prefix}{key}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict) -> Config:
    """Build a Config from a plain dict (unknown keys and wrong types raise ConfigError); no validation."""
    return _build(Config, raw, "")


def load_config(path: str | Path, overrides: list[str] | None = None, world_size: int = 1) -> Config:
    """YAML file (+ base) -> overrides -> typed Config -> validate(). `train.out_dir` defaults to out/<file stem>."""
    raw = apply_overrides(load_yaml_tree(path), overrides or [])
    cfg = config_from_dict(raw)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = str(Path("out") / Path(path).stem)
    if cfg.data.dataset_dir is None:
        # Under out/, not ./datasets/: a top-level datasets/ folder would shadow the Hugging Face package.
        cfg.data.dataset_dir = str(Path("out") / "datasets" / Path(path).stem)
    cfg.validate(world_size)
    return cfg
