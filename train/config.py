"""The run configuration's schema: one dataclass per YAML section, and how a run's config file is loaded.

Loading is: YAML file (with optional `base:` inheritance, deep-merged) -> dotted `key=value` overrides from the
command line (values typed by YAML rules) -> one dataclass per section (an unknown key is an error suggesting the
closest valid key; a wrong type names key, value and expected type) -> each section's `validate()` -> the
cross-section rules in `Config.validate()`. The generic machinery is core/configio.py; the model and data
sections are declared by their own packages (model/config.py, data/config.py). Every field is documented once,
where it is declared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.configio import apply_overrides, build, dump_yaml, load_yaml_tree
from core.device import check_device_name
from core.errors import ConfigError
from data.config import DataConfig
from data.dataset_dir import default_dataset_dir
from model.config import ModelConfig

SEED_LIMIT = 2**63  # torch.manual_seed takes a signed 64-bit seed


@dataclass
class TrainConfig:
    """The training loop: batch geometry, length, evaluation, checkpoints, and execution options."""

    out_dir: str | None = None  # run directory; None: out/<config file name>
    seed: int = 1337  # seeds model init, data order and dropout
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPUs, CPUs with native bf16; else fp32
    batch_size: int = 32  # global batch in sequences per optimizer step (all ranks, all micro batches)
    micro_batch_size: int = 8  # sequences per forward pass on one rank; accumulation steps are derived
    seq_len: int = 256  # tokens per training sequence (<= model.max_seq_len)
    max_steps: int = 1000  # optimizer steps; the LR schedule spans them
    stop_at_step: int | None = None  # save and exit after this step (split a long run into shorter jobs)
    # wall-clock budget in seconds (evaluation and saving included), beside max_steps: training stops, evaluates
    # and saves when either is reached, and the LR schedule runs over whichever ends first (see Trainer.lr)
    max_time: float | None = None
    eval_interval: int = 200  # evaluate every N steps (and at the end)
    eval_batches: int = 20  # validation batches (of batch_size sequences) per evaluation
    # lm-evaluation-harness tasks (names of tasks, groups or tags) run at each evaluation and logged as
    # eval/<task>/<metric>; empty: none. Needs lm-eval (requirements-dev.txt); unknown names fail at startup
    eval_tasks: list[str] = field(default_factory=list)
    eval_tasks_include: str | None = None  # a directory of task YAMLs searched before lm-eval's own tasks
    eval_tasks_limit: int | float | None = None  # documents per task: a count, or a fraction (< 1); None: all
    save_interval: int = 500  # checkpoint every N steps (and at the end)
    keep_last: int = 2  # step checkpoints kept, besides the best by validation loss
    resume: str = "auto"  # auto: latest checkpoint in out_dir if any; never: refuse a non-empty out_dir; or a path
    init_from: str | None = None  # start from these weights (checkpoint or run dir; e.g. an imported HF model)
    #                               with a fresh optimizer at step 0; ignored when resuming
    compile: bool = False  # torch.compile the model
    # pretraining: attention never crosses a document boundary (an EOS) inside a training window, and RoPE positions
    # restart at each document (model/documents.py); fine-tuning on conversations always does this when packing
    document_masking: bool = False
    # every epoch after the first cuts the train stream into windows at a new seeded offset, so repeated data meets
    # new contexts (train/dataloader.py); for runs of several epochs over little data. Fixed when a run starts
    shift_windows: bool = False
    activation_checkpointing: bool = False  # recompute block activations in backward to save memory
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when launched with several processes
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    log_interval: int = 10  # write a metrics record every N steps
    sample_prompt: str = "def "  # prompt for the sample printed at each evaluation
    sample_tokens: int = 64  # tokens generated for that sample

    def validate(self) -> None:
        """Raise ConfigError naming the first train.* key that is out of range."""
        for key in ("batch_size", "micro_batch_size", "seq_len", "max_steps", "eval_interval", "eval_batches",
                    "save_interval", "keep_last", "max_bad_steps", "log_interval"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.stop_at_step is not None and self.stop_at_step <= 0:
            raise ConfigError(f"train.stop_at_step must be positive, got {self.stop_at_step}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"train.max_time must be a positive number of seconds, got {self.max_time}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"train.seed must be in [0, 2**63), got {self.seed}")
        if self.sample_tokens < 0:
            raise ConfigError(f"train.sample_tokens must be >= 0, got {self.sample_tokens}")
        if self.sample_tokens and not self.sample_prompt:
            raise ConfigError("train.sample_prompt must not be empty (or set train.sample_tokens=0 for no sample)")
        check_device_name(self.device, "train.device")
        limit = self.eval_tasks_limit
        if limit is not None and not ((limit >= 1 and limit == int(limit)) or 0 < limit < 1):
            raise ConfigError(
                f"train.eval_tasks_limit must be a whole number of documents >= 1 or a fraction in (0, 1), got {limit}"
            )
        if len(set(self.eval_tasks)) != len(self.eval_tasks) or not all(self.eval_tasks):
            raise ConfigError(f"train.eval_tasks must name each task once, got {self.eval_tasks}")
        if not self.resume:
            raise ConfigError("train.resume must be auto, never, or a checkpoint path")


@dataclass
class OptimConfig:
    """The optimizer and the learning-rate schedule (counted in optimizer steps)."""

    # adamw: AdamW for every parameter. muon: Muon for the 2-D weights inside the transformer blocks, AdamW for
    # the embedding, the output head (tied or not) and the norms; one lr and schedule for both (train/muon.py)
    name: Literal["adamw", "muon"] = "adamw"
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
    fused: bool | None = None  # fused AdamW kernel; None: on for CUDA (optim.name=adamw only)
    muon_momentum: float = 0.95  # Muon's Nesterov momentum (optim.name=muon)

    def validate(self) -> None:
        """Raise ConfigError naming the first optim.* key that is out of range."""
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr}) must be between 0 and optim.lr ({self.lr})")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule == "wsd" and not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        for key in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps must be positive, got {self.eps}")
        if self.name == "muon" and self.fused:
            raise ConfigError("optim.fused=true is for AdamW: with optim.name=muon leave it unset")


@dataclass
class LogConfig:
    """Where metrics go."""

    tensorboard: bool = True  # TensorBoard events in out_dir/tb
    wandb: bool = False  # Weights & Biases (respects WANDB_MODE=offline)
    wandb_project: str = "mini-llm"
    wandb_run_name: str | None = None  # None: the out_dir name
    progress: bool = True  # tqdm progress bar
    peak_tflops: float | None = None  # dense bf16 peak per device for MFU; None: looked up from the GPU name

    def validate(self) -> None:
        """Raise ConfigError naming the first log.* key that is out of range."""
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"log.peak_tflops must be positive, got {self.peak_tflops}")


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
        """Each section's own rules, then the rules that span sections; raise ConfigError naming the keys."""
        try:
            self.model.validate(prefix="model.")
        except ValueError as e:  # the model layer reports plain ValueErrors; here they are config errors
            raise ConfigError(str(e)) from None
        for section in (self.data, self.train, self.optim, self.log):
            section.validate()
        t, o = self.train, self.optim
        if t.sample_tokens >= self.model.max_seq_len:
            raise ConfigError(
                f"train.sample_tokens must be in [0, model.max_seq_len={self.model.max_seq_len}), got {t.sample_tokens}"
            )
        if t.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len ({t.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        per_step = t.micro_batch_size * world_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"train.batch_size ({t.batch_size}) must be divisible by train.micro_batch_size "
                f"({t.micro_batch_size}) x {world_size} data-parallel rank(s) = {per_step}"
            )
        if self.data.format == "chat" and t.shift_windows:
            raise ConfigError("train.shift_windows applies to pretraining windows; with data.format=chat every row "
                              "holds whole conversations, so there are no windows to shift")
        if self.data.format == "chat" and not (self.data.tokenizer_dir or t.init_from):
            raise ConfigError("data.format=chat needs a tokenizer with chat markers: set train.init_from to the "
                              "checkpoint to fine-tune (see scripts/add_chat_tokens.py) or data.tokenizer_dir")
        if o.warmup_steps >= t.max_steps:
            raise ConfigError(
                f"optim.warmup_steps ({o.warmup_steps}) must be shorter than train.max_steps ({t.max_steps})"
            )
        if o.schedule == "wsd":
            decay_steps = int(o.decay_fraction * t.max_steps)
            if o.warmup_steps + decay_steps > t.max_steps:
                raise ConfigError(
                    f"optim.warmup_steps ({o.warmup_steps}) + decay steps ({decay_steps} = optim.decay_fraction "
                    f"x train.max_steps) exceed train.max_steps ({t.max_steps})"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


def config_from_dict(raw: dict) -> Config:
    """Build a Config from a plain dict (unknown keys and wrong types raise ConfigError); no validation."""
    return build(Config, raw)


def load_config(path: str | Path, overrides: list[str] | None = None, world_size: int = 1) -> Config:
    """YAML file (+ base) -> overrides -> typed Config -> validate(). `train.out_dir` defaults to out/<file stem>,
    `data.dataset_dir` to out/datasets/<file stem>-<hash of the data settings>."""
    raw = apply_overrides(load_yaml_tree(path), overrides or [])
    cfg = config_from_dict(raw)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = str(Path("out") / Path(path).stem)
    if cfg.data.dataset_dir is None:
        d = cfg.data
        # A conversation dataset is encoded with the tokenizer of train.init_from when data.tokenizer_dir is unset.
        extra = {"format": "chat", "init_from": cfg.train.init_from} if d.format == "chat" else None
        cfg.data.dataset_dir = str(default_dataset_dir(Path(path).stem, d.sources, cfg.model.vocab_size,
                                                       d.tokenizer_dir, d.text_field, d.val_fraction,
                                                       d.tokenizer_sample_mb, extra))
    cfg.validate(world_size)
    return cfg
