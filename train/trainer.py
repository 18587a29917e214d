"""The training loop: data -> model -> AdamW steps with accumulation, evaluation, checkpoints, exact resume.

Read top to bottom: `train(cfg)` builds a Trainer, whose `fit()` runs the loop. One optimizer step is
`train_step(micro_batches)`; everything a resume needs is in `trainer_state()` / `load_trainer_state()`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from core.errors import CheckpointError, ConfigError, DataError
from model import Transformer
from train import checkpoint as ckpt
from train.config import Config
from train.memory import estimate_memory
from train.metrics import MetricsLogger, resolve_peak_flops
from train.optim import build_optimizer, lr_at, set_lr
from train.parallel import (
    World,
    apply_parallelism,
    autocast,
    broadcast_object,
    check_full_model_state,
    close_world,
    full_model_state,
    full_optimizer_state,
    grad_sync,
    init_world,
    load_full_model_state,
    load_full_optimizer_state,
    on_main,
    pick_device,
    reshard,
    resolve_parallel,
    resolve_precision,
)

log = logging.getLogger("mini_llm")


class TrainingStopped(RuntimeError):
    """Training gave up (too many non-finite steps in a row); the last good checkpoint was written."""


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    final_val_loss: float | None
    checkpoint: Path | None
    interrupted: int | None  # signal number if stopped by SIGINT/SIGTERM


def compute_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the micro batch, computed in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train(cfg: Config) -> TrainResult:
    """Run (or resume) the training described by `cfg`; handles the process group's life."""
    world = init_world(cfg.train.device, cfg.train.parallel)
    try:
        return Trainer(cfg, world).fit()
    finally:
        close_world()


class StepRunner:
    """One optimizer step: forward/backward over the micro batches, clipping, the AdamW update.

    Shared by the Trainer and benchmarks/train_throughput.py so both measure the same code.
    """

    def __init__(self, model, optimizer, scaler, device: torch.device, precision: str, autocast_precision: str,
                 grad_clip: float, world: World):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device, self.precision, self.autocast_precision = device, precision, autocast_precision
        self.grad_clip, self.world = grad_clip, world

    def __call__(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, bool]:
        """Returns (loss, grad_norm, applied).

        Each micro-batch loss is divided by their count, so the gradient is the mean over every token of the
        global batch (all micro batches have the same number of tokens). A non-finite loss or gradient norm
        skips the update.
        """
        self.model.train()
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with grad_sync(self.model, enabled=i == n - 1):
                with autocast(self.device, self.autocast_precision):
                    loss = compute_loss(self.model(x), y) / n
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.world.distributed:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= self.world.world_size
        self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        loss_value, norm_value = loss_sum.item(), grad_norm.item()
        # Under fp16 the scaler itself skips steps with inf gradients while it calibrates its scale.
        applied = math.isfinite(loss_value) and (math.isfinite(norm_value) or self.precision == "fp16")
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, applied


class Trainer:
    def __init__(self, cfg: Config, world: World | None = None):
        self.world = world or World()
        cfg.validate(self.world.world_size)
        self.cfg = cfg
        t = cfg.train
        self.device = pick_device(t.device, self.world)
        self.parallel = resolve_parallel(t.parallel, self.world)
        self.precision = resolve_precision(t.precision, self.device, self.parallel)
        self.accum = cfg.grad_accum_steps(self.world.world_size)
        self.out_dir = Path(t.out_dir)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Rank 0 decides (it alone may see the checkpoints, e.g. on another node's disk) and tells the others.
        resume_from = broadcast_object(self.world, on_main(self.world, self._resume_source))
        init_from = None
        if resume_from is None and t.init_from:
            init_from = broadcast_object(self.world, on_main(self.world, lambda: ckpt.find_checkpoint(t.init_from)))
        self._setup_data()
        self.raw_model = self._build_model(resume_from or init_from)  # FSDP: already sharded in place
        if init_from is not None:
            self._info(f"initialized from the weights of {init_from}")
        if self.parallel == "fsdp":
            self.model = self.raw_model
        else:
            self.model = apply_parallelism(self.raw_model, cfg, self.device, self.world, self.precision)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # FSDP2's mixed-precision policy casts parameters itself; autocast is for everything else.
        use_autocast = not (self.parallel == "fsdp" and self.precision == "bf16")
        self.precision_ctx = self.precision if use_autocast else "fp32"
        self.step_runner = StepRunner(self.model, self.optimizer, self.scaler, self.device, self.precision,
                                      self.precision_ctx, cfg.optim.grad_clip, self.world)

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: tuple[int, float] | None = None  # (step, loss) of the latest evaluation
        self.bad_steps = 0
        self.skipped_steps = 0
        self.stop_signal: int | None = None
        if resume_from is not None:
            saved_world = self.load_trainer_state(on_main(self.world, lambda: _read_trainer_state(resume_from)))
            ranks = f" (saved by {saved_world} rank(s))" if saved_world != self.world.world_size else ""
            self._info(f"resumed from {resume_from} at step {self.step}{ranks}")

        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")
        self.metrics = MetricsLogger(cfg, self.out_dir, self.step, enabled=self.world.is_main)
        self.peak_flops = resolve_peak_flops(cfg, self.device)
        self.flops_per_token = self.raw_model.flops_per_token(t.seq_len)

    # ---- setup --------------------------------------------------------------------------------------------

    def _info(self, msg: str) -> None:
        if self.world.is_main:
            tqdm.write(msg)

    def _resume_source(self) -> Path | None:
        """The checkpoint to resume from, following train.resume (auto / never / a path)."""
        mode = self.cfg.train.resume
        latest = self.out_dir / "checkpoints" / ckpt.LATEST
        if mode == "never":
            if self.out_dir.exists() and any(self.out_dir.iterdir()):
                raise ConfigError(
                    f"train.out_dir {self.out_dir} is not empty and train.resume=never: "
                    "choose another out_dir, remove it, or use train.resume=auto"
                )
            return None
        if mode == "auto":
            return ckpt.find_checkpoint(self.out_dir) if latest.is_file() else None
        return ckpt.find_checkpoint(mode)

    def _setup_data(self) -> None:
        """Prepare the dataset unless it is up to date (rank 0; others wait), then open tokenizer, shards and
        loader. A dataset_dir built from other sources or settings is an error, never silently reused."""
        from data.prepare_data import prepare_dataset
        from Tokenizer import Tokenizer
        from train.dataloader import DataLoader, TokenDataset, check_compatible

        d, t = self.cfg.data, self.cfg.train
        dataset_dir = Path(d.dataset_dir)
        tokenizer_dir = Path(d.tokenizer_dir) if d.tokenizer_dir else dataset_dir / "tokenizer"

        def prepare() -> None:
            inside = tokenizer_dir / "tokenizer.model"
            if not d.tokenizer_dir and inside.is_file():
                n = Tokenizer.load(tokenizer_dir).vocab_size
                if n != self.cfg.model.vocab_size:
                    raise DataError(
                        f"{tokenizer_dir} holds a {n}-token tokenizer but model.vocab_size is "
                        f"{self.cfg.model.vocab_size}: set model.vocab_size={n}, or another data.dataset_dir to "
                        "train a new tokenizer"
                    )
            if not (dataset_dir / "manifest.json").is_file():
                self._info(f"preparing dataset {dataset_dir} from {', '.join(d.sources)}")
            try:  # a no-op (a stat of each source) when the dataset is up to date
                prepare_dataset(
                    d.sources,
                    dataset_dir,
                    tokenizer_dir=tokenizer_dir if d.tokenizer_dir else None,
                    vocab_size=None if (tokenizer_dir / "tokenizer.model").is_file() else self.cfg.model.vocab_size,
                    text_field=d.text_field,
                    val_fraction=d.val_fraction,
                    workers=d.workers,
                    tokenizer_sample_mb=d.tokenizer_sample_mb,
                    progress=self.cfg.log.progress,
                )
            except DataError as e:
                raise DataError(f"data.dataset_dir: {e}, or set another data.dataset_dir") from None

        on_main(self.world, prepare)  # the other ranks wait for it, and stop with its error if it fails
        self.tokenizer_dir = tokenizer_dir
        self.tokenizer = Tokenizer.load(tokenizer_dir)
        self.dataset = TokenDataset(dataset_dir)
        check_compatible(self.dataset, self.tokenizer, self.cfg.model.vocab_size)
        self.loader = DataLoader(
            self.dataset, t.micro_batch_size, t.seq_len, seed=t.seed,
            rank=self.world.rank, world_size=self.world.world_size,
        )
        next(iter(self.loader.validation_batches(1)))  # fail now, not at the first evaluation, if val is too small

    def _build_model(self, weights_from: Path | None) -> Transformer:
        """Build on the meta device, materialize on the target device, then init the weights or load them from
        `weights_from` (the checkpoint resumed, or train.init_from).

        Under FSDP the model is sharded while still on the meta device, so no GPU ever holds all of it: rank 0
        makes the full weights on the CPU (the seeded init, or the checkpoint's) and each rank loads its shards.
        Otherwise every rank inits the same seeded weights; a checkpoint is read by rank 0 and broadcast.
        """
        with torch.device("meta"):
            model = Transformer(self.cfg.model)
        if self.parallel == "fsdp":
            apply_parallelism(model, self.cfg, self.device, self.world, self.precision)
            model.to_empty(device=self.device)
            model.rope.reset_parameters()  # the non-persistent RoPE tables are in no state dict
            torch.manual_seed(self.cfg.train.seed)
            weights = on_main(self.world, lambda: self._full_weights(model, weights_from))
            load_full_model_state(model, weights or {})
            # Rank 0 alone drew the init: give every rank the RNG state it would have after drawing it too.
            torch.set_rng_state(broadcast_object(self.world, torch.get_rng_state()))
        else:
            model.to_empty(device=self.device)
            torch.manual_seed(self.cfg.train.seed)
            model.init_weights()
            if weights_from is not None:
                weights = on_main(self.world, lambda: self._checkpoint_weights(model, weights_from))
                load_full_model_state(model, weights or {})
        n = model.num_params()
        self._info(
            f"model: {n / 1e6:.2f}M parameters ({model.num_params(False) / 1e6:.2f}M without embeddings), "
            f"device {self.device}, precision {self.precision}, parallel {self.parallel}, "
            f"{self.world.world_size} rank(s), {self.accum} micro batch(es) per step"
        )
        self._info(estimate_memory(self.cfg, self.world.world_size, self.parallel, self.precision).summary())
        return model

    def _checkpoint_weights(self, model: Transformer, weights_from: Path) -> dict[str, torch.Tensor]:
        """The checkpoint's full weights on the CPU, checked against this run's model (rank 0)."""
        saved = ckpt.load_checkpoint_config(weights_from).model.architecture()
        ours = self.cfg.model.architecture()
        diff = [f"{k} {saved[k]} (checkpoint) != {ours[k]} (model.{k})" for k in ours if saved[k] != ours[k]]
        if diff:
            raise CheckpointError(f"checkpoint {weights_from} has a different model architecture: {'; '.join(diff)}")
        weights = ckpt.read_weights(weights_from)
        check_full_model_state(model, weights, str(weights_from / ckpt.WEIGHTS))
        return weights

    def _full_weights(self, model: Transformer, weights_from: Path | None) -> dict[str, torch.Tensor]:
        """Rank 0's full weights for an FSDP model: the checkpoint's, or a seeded init on the CPU (the same
        numbers as a single-process CPU run)."""
        if weights_from is not None:
            return self._checkpoint_weights(model, weights_from)
        with torch.device("meta"):
            full = Transformer(self.cfg.model)
        full.to_empty(device="cpu")
        full.init_weights()
        return ckpt.model_state_dict(full)

    def _barrier(self) -> None:
        if dist.is_initialized() and self.world.distributed:
            dist.barrier()

    # ---- state ---------------------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        """Everything besides the weights that an exact resume needs (plain tensors and containers)."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "skipped_steps": self.skipped_steps,
            # Keyed by parameter name and full (gathered to rank 0 under FSDP): portable between none, DDP and
            # FSDP and across world sizes. Collective under FSDP; {} on ranks other than 0.
            "optimizer": full_optimizer_state(self.raw_model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            # The schedule is a pure function of the step and the config; saved for completeness.
            "scheduler": {"schedule": self.cfg.optim.schedule, "step": self.step},
            "loader": self.loader.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
            },
            "world_size": self.world.world_size,
        }

    def load_trainer_state(self, state: dict | None) -> int:
        """Restore what trainer_state() saved, given on rank 0 (other ranks may pass None: they get rank 0's,
        and their optimizer shards). Returns the world size the state was saved with."""
        optim_state = state["optimizer"] if state is not None else None
        if state is not None:
            state = {k: v for k, v in state.items() if k != "optimizer"}
            state["has_optimizer"] = optim_state is not None
        state = broadcast_object(self.world, state)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.best_val_loss = state["best_val_loss"]
        self.skipped_steps = state["skipped_steps"]
        if state["has_optimizer"]:
            load_full_optimizer_state(self.raw_model, self.optimizer, optim_state or {})
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate(state["rng"]["python"])
        return int(state.get("world_size", 1))

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step_NNNNNNN (rank 0) from the unwrapped model; all ranks wait for it.

        Every rank takes part in gathering the full weights and optimizer state (FSDP); rank 0 writes them."""
        weights = full_model_state(self.raw_model)
        state = self.trainer_state()
        path = None
        if self.world.is_main:
            val = self.last_val_loss[1] if self.last_val_loss and self.last_val_loss[0] == self.step else None
            path = ckpt.save_training_checkpoint(
                self.out_dir, self.step, weights, self.cfg, state, self.tokenizer_dir, val, self.cfg.train.keep_last
            )
        self._barrier()
        return path

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float, bool]:
        return self.step_runner(micro_batches)

    # ---- evaluation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss, perplexity and bits per byte on the fixed validation windows (mean over all ranks)."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        # eval_batches counts global batches, so the windows evaluated do not depend on how a batch is split
        # into micro batches and ranks.
        for x, y in self.loader.validation_batches(self.cfg.train.eval_batches * self.accum):
            x, y = x.to(self.device), y.to(self.device)
            with autocast(self.device, self.precision_ctx):
                logits = self.model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            count += y.numel()
        if self.world.distributed:
            dist.all_reduce(total)
            dist.all_reduce(count)
        reshard(self.model)
        self.model.train()
        val_loss = (total / count).item()
        bytes_per_token = self.dataset.bytes_per_token("val")
        return {
            "step": self.step,
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 50.0)),
            "val_bpb": val_loss / math.log(2) / bytes_per_token,
        }

    @torch.no_grad()
    def sample(self) -> str:
        """A short continuation of train.sample_prompt (top-k sampling with a fixed seed of its own, so it
        never touches the training RNG)."""
        # Under FSDP every rank must run the same forwards (they all-gather the weights); the generator is
        # seeded and the logits are identical on every rank, so all ranks stop at the same token. With FSDP's
        # bf16 policy the queries are bf16 while the KV cache follows the fp32 master weights: autocast makes
        # attention take both in bf16.
        from inference import Generator, SamplingParams

        fsdp_precision = self.precision if self.parallel == "fsdp" else "fp32"
        try:
            with autocast(self.device, fsdp_precision):
                done = Generator(self.raw_model, self.tokenizer).generate(
                    self.cfg.train.sample_prompt, self.cfg.train.sample_tokens,
                    SamplingParams(temperature=0.8, top_k=40), seed=0,
                )
        finally:
            self.raw_model.clear_cache()  # training must never run through a KV cache
            self.raw_model.train()
        reshard(self.raw_model)
        return done[0].text

    # ---- the loop -------------------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.stop_signal = signum
        self._info(f"received {signal.Signals(signum).name}: finishing this step and saving a checkpoint")

    def fit(self) -> TrainResult:
        t = self.cfg.train
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        tokens_per_step = t.batch_size * t.seq_len
        bar = tqdm(
            total=t.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
            disable=not (self.world.is_main and self.cfg.log.progress),
        )
        last_ckpt: Path | None = None
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.step < t.max_steps:
                lr = lr_at(self.step, self.cfg.optim, t.max_steps)
                set_lr(self.optimizer, lr)
                batches = [self.loader.next_batch() for _ in range(self.accum)]
                loss, grad_norm, applied = self.train_step(batches)
                self.step += 1
                self.tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                bar.update(1)

                if applied:
                    self.bad_steps = 0
                else:
                    self.bad_steps += 1
                    self.skipped_steps += 1
                    self._info(f"step {self.step}: non-finite loss {loss} or grad norm {grad_norm}; update skipped")
                    self.metrics.log({"step": self.step, "skipped": 1, "loss": _json_num(loss),
                                      "grad_norm": _json_num(grad_norm)})
                    if self.bad_steps >= t.max_bad_steps:
                        # Skipped updates left the weights and optimizer untouched: they are the last good ones.
                        last_ckpt = self.save_checkpoint()
                        raise TrainingStopped(
                            f"{self.bad_steps} non-finite steps in a row (train.max_bad_steps={t.max_bad_steps}); "
                            f"stopped. Last good checkpoint: {last_ckpt}. Lower optim.lr or check the data."
                        )

                if applied and (self.step % t.log_interval == 0 or self.step == 1):
                    elapsed = time.perf_counter() - window_start
                    tps = window_tokens / elapsed if elapsed > 0 else 0.0
                    record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                              "tokens": self.tokens_seen, "tokens_per_sec": tps}
                    if self.peak_flops:
                        record["mfu"] = tps * self.flops_per_token / (self.peak_flops * self.world.world_size)
                    self.metrics.log(record)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                    window_start, window_tokens = time.perf_counter(), 0

                last_step = self.step == t.max_steps
                halt = self._stop_requested() or self.step == t.stop_at_step
                save = self.step % t.save_interval == 0 or last_step or halt
                # Every checkpoint is evaluated, so `best` compares them all.
                if self.step % t.eval_interval == 0 or last_step or save:
                    self._run_eval()
                    window_start, window_tokens = time.perf_counter(), 0
                if save:
                    last_ckpt = self.save_checkpoint()
                    window_start, window_tokens = time.perf_counter(), 0
                if halt and not last_step:
                    self._info(f"stopped at step {self.step}; run the same command again to resume")
                    break
        finally:
            bar.close()
            self.metrics.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        final = self.last_val_loss[1] if self.last_val_loss and self.last_val_loss[0] == self.step else None
        return TrainResult(self.step, self.tokens_seen, final, last_ckpt, self.stop_signal)

    def _stop_requested(self) -> bool:
        """True when this rank or any other got SIGINT/SIGTERM: all ranks must stop (and save) at one step."""
        if self.world.distributed:
            signum = torch.tensor(self.stop_signal or 0, device=self.device)
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
            self.stop_signal = int(signum.item()) or None
        return self.stop_signal is not None

    def _run_eval(self) -> None:
        record = self.evaluate()
        self.last_val_loss = (self.step, record["val_loss"])
        if self.best_val_loss is None or record["val_loss"] < self.best_val_loss:
            self.best_val_loss = record["val_loss"]
        self.metrics.log(record)
        text = self.sample() if self.cfg.train.sample_tokens > 0 else ""
        self._info(
            f"step {self.step}: val_loss {record['val_loss']:.4f}  ppl {record['val_ppl']:.2f}  "
            f"bpb {record['val_bpb']:.4f}"
        )
        if text:
            self._info(f"sample: {json.dumps(self.cfg.train.sample_prompt + text)}")
            self.metrics.log_text("sample", self.cfg.train.sample_prompt + text, self.step)


@torch.no_grad()
def _read_trainer_state(ckpt_dir: Path) -> dict:
    """trainer_state.pt, checked to hold a name-keyed optimizer state (rank 0)."""
    state = ckpt.load_training_state(ckpt_dir)
    optim_state = state.get("optimizer")
    if optim_state is not None and any(not isinstance(k, str) for k in optim_state.get("state", {})):
        raise CheckpointError(f"{ckpt_dir / ckpt.STATE} keys the optimizer state by position, not by parameter "
                              "name (an older format): it cannot be resumed")
    return state


def _json_num(x: float) -> float | str:
    """JSON has no NaN/inf: write them as strings."""
    return x if math.isfinite(x) else str(x)
