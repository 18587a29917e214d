"""The training loop: when to step, log, evaluate, sample and save; signals; resuming; metrics.

Read top to bottom: `train(cfg)` joins the process group and runs `Trainer(cfg).fit()`. The Trainer prepares the
data (data/setup.py), builds the engine (train/engine.py: model, optimizer, precision, parallelism) and then
loops. It never branches on the parallel mode: the engine hides DDP and FSDP. Everything an exact resume needs
is `state_dict()` / `load_state_dict()`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from core.errors import ConfigError
from core.lock import LOCK_FILE, DirectoryLock
from core.memory import require_memory
from data.setup import open_chat_data, open_training_data, prepare_chat_data, prepare_training_data
from model.checkpoint import TOKENIZER, find_checkpoint
from train import checkpoint as ckpt
from train.config import Config
from train.dataloader import DataLoader
from train.engine import Engine, StepResult, build_engine, count_targets, summed_next_token_loss
from train.eval_tasks import EvalTasks
from train.memory import estimate_memory
from train.metrics import MetricsLogger, resolve_peak_flops
from train.optim import lr_at
from train.parallel import World, broadcast_object, close_world, init_world, on_main, resolve_plan
from train.sft import ChatLoader


class TrainingStopped(RuntimeError):
    """Training gave up (too many non-finite steps in a row); the last good checkpoint was written."""


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    final_val_loss: float | None
    checkpoint: Path | None
    interrupted: int | None  # signal number if stopped by SIGINT/SIGTERM


def train(cfg: Config) -> TrainResult:
    """Run (or resume) the training described by `cfg`; handles the process group's life."""
    world = init_world(cfg.train.device, cfg.train.parallel)
    try:
        return Trainer(cfg, world).fit()
    finally:
        close_world()


class Throughput:
    """Tokens per second over the steps since the last reset (evaluation and saving are not counted)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.tokens / elapsed if elapsed > 0 else 0.0


class Trainer:
    def __init__(self, cfg: Config, world: World | None = None):
        self.world = world or World()
        cfg.validate(self.world.world_size)
        self.cfg = cfg
        t = cfg.train
        self.plan = resolve_plan(t, self.world)
        self.accum = cfg.grad_accum_steps(self.world.world_size)
        self.memory = estimate_memory(cfg, self.world.world_size, self.plan.parallel, self.plan.precision)
        self._check_memory()
        self.out_dir = Path(t.out_dir)

        # Rank 0 holds the run directory for the whole run: a second job on it stops here, naming this one.
        self.lock = DirectoryLock(self.out_dir, "train.out_dir") if self.world.is_main else None
        created = not self.out_dir.exists()
        lock_created = not (self.out_dir / LOCK_FILE).exists()
        on_main(self.world, lambda: self.lock.acquire())
        try:
            self._setup(cfg)
        except BaseException:
            self.close()
            if self.world.is_main:  # a run that failed to start leaves nothing behind, not even its lock file
                if created and [p.name for p in self.out_dir.iterdir()] == [LOCK_FILE]:
                    shutil.rmtree(self.out_dir)
                elif lock_created:
                    (self.out_dir / LOCK_FILE).unlink(missing_ok=True)
            raise

    def _setup(self, cfg: Config) -> None:
        t = cfg.train
        self.eval_tasks = EvalTasks(t)  # unknown lm-eval task names fail here, before any data or model
        # Rank 0 decides (it alone may see the checkpoints, e.g. on another node's disk) and tells the others.
        resume_from, saved_state = on_main(self.world, self._resume_source) or (None, None)
        resume_from = broadcast_object(self.world, resume_from)
        init_from = None
        if resume_from is None and t.init_from:
            init_from = broadcast_object(self.world, on_main(self.world, lambda: find_checkpoint(t.init_from)))

        self.chat = cfg.data.format == "chat"
        if self.chat:  # conversations, encoded with the tokenizer the fine-tuned checkpoint already has
            tok_dir = Path(cfg.data.tokenizer_dir) if cfg.data.tokenizer_dir else (resume_from or init_from) / TOKENIZER
            on_main(self.world, lambda: prepare_chat_data(cfg.data, tok_dir, self._info))
            data = open_chat_data(cfg.data, tok_dir, cfg.model.vocab_size)
        else:
            on_main(self.world, lambda: prepare_training_data(cfg.data, cfg.model.vocab_size, cfg.log.progress,
                                                              self._info))  # the other ranks wait for it
            data = open_training_data(cfg.data, cfg.model.vocab_size)
        self.tokenizer_dir, self.tokenizer, self.dataset = data.tokenizer_dir, data.tokenizer, data.dataset
        if self.chat:
            self.loader = ChatLoader(self.dataset, t.micro_batch_size, t.seq_len, seed=t.seed, rank=self.world.rank,
                                     world_size=self.world.world_size, pack=cfg.data.pack)
            if any(self.loader.truncated.values()):
                self._info(f"warning: {self.loader.truncated['train']} train and {self.loader.truncated['val']} val "
                           f"conversation(s) are longer than train.seq_len={t.seq_len}: only their start is used")
        else:
            self.loader = DataLoader(self.dataset, t.micro_batch_size, t.seq_len, seed=t.seed, rank=self.world.rank,
                                     world_size=self.world.world_size, document_masking=t.document_masking,
                                     shift_windows=t.shift_windows)
        next(iter(self.loader.validation_batches(1)))  # fail now, not at the first evaluation, if val is too small

        self.engine: Engine = build_engine(cfg, self.plan, resume_from or init_from)
        self._describe_model()
        if init_from is not None:
            self._info(f"initialized from the weights of {init_from}")

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: tuple[int, float] | None = None  # (step, loss) of the latest evaluation
        self.bad_steps = 0
        self.skipped_steps = 0
        self.train_seconds = 0.0  # wall-clock time inside fit() over the whole run, resumes included
        self._now = time.monotonic  # the clock train.max_time is measured with
        self.stop_signal: int | None = None
        if resume_from is not None:
            saved_world = self.load_state_dict(saved_state)
            ranks = f" (saved by {saved_world} rank(s))" if saved_world != self.world.world_size else ""
            self._info(f"resumed from {resume_from} at step {self.step}{ranks}")

        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")
        self.metrics = MetricsLogger(cfg, self.out_dir, self.step, enabled=self.world.is_main)
        self.peak_flops = resolve_peak_flops(cfg, self.plan.device)
        self.flops_per_token = self.engine.raw_model.flops_per_token(t.seq_len)

    # ---- setup --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the run directory (idempotent; fit() does it when it ends)."""
        if self.lock is not None:
            self.lock.release()

    def _info(self, msg: str) -> None:
        if self.world.is_main:
            tqdm.write(msg)

    def _resume_source(self) -> tuple[Path | None, dict | None]:
        """The checkpoint to resume from and its trainer state, following train.resume (auto / never / a path).

        auto takes the newest checkpoint of out_dir that loads completely, and says which newer ones it skipped
        and why; an explicit path must load, or it is one error."""
        mode = self.cfg.train.resume
        if mode == "never":
            if any(p.name != LOCK_FILE for p in self.out_dir.iterdir()):
                raise ConfigError(
                    f"train.out_dir {self.out_dir} is not empty and train.resume=never: "
                    "choose another out_dir, remove it, or use train.resume=auto"
                )
            return None, None
        if mode == "auto":
            found = ckpt.newest_loadable(self.out_dir / "checkpoints")
            if found is None:
                return None, None
            source, state, skipped = found
            for path, reason in skipped:
                self._info(f"warning: skipped checkpoint {path}: {reason}")
            return source, state
        source = find_checkpoint(mode)
        return source, ckpt.load_resumable(source)

    def _check_memory(self) -> None:
        """Refuse, before any data is prepared or tensor allocated, a run the device cannot hold (the estimate is
        rough, so only a run that needs more than all the free memory is refused)."""
        est, device = self.memory, self.plan.device
        # CPU ranks of one machine share its memory; each GPU has its own.
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if device.type == "cpu" else 1
        require_memory(
            est.total * ranks, device,
            f"training this model ({est.params / 1e9:.3g}B parameters, {est.tokens} tokens per micro batch)",
            "make the model smaller (model.dim, model.n_layers, model.vocab_size) or the micro batch "
            "(train.micro_batch_size, train.seq_len), or set train.activation_checkpointing=true or "
            "train.parallel=fsdp over several GPUs",
            ConfigError,
        )

    def _describe_model(self) -> None:
        model, plan = self.engine.raw_model, self.plan
        n = model.num_params()
        self._info(
            f"model: {n / 1e6:.2f}M parameters ({model.num_params(False) / 1e6:.2f}M without embeddings), "
            f"device {plan.device}, precision {plan.precision}, parallel {plan.parallel}, "
            f"{self.world.world_size} rank(s), {self.accum} micro batch(es) per step"
        )
        self._info(self.memory.summary())

    # ---- state ---------------------------------------------------------------------------------------------

    def state_dict(self, engine_state: dict | None = None) -> dict:
        """Everything besides the weights that an exact resume needs (plain tensors and containers); collective
        under FSDP (the optimizer state is gathered to rank 0) unless `engine_state` is given."""
        engine_state = engine_state or self.engine.state_dict()
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "optimizer": engine_state["optimizer"],
            "scaler": engine_state["scaler"],
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

    def load_state_dict(self, state: dict | None) -> int:
        """Restore what state_dict() saved, given on rank 0 (other ranks may pass None: they get rank 0's, and
        their optimizer shards). Returns the world size the state was saved with."""
        self.engine.load_state_dict(None if state is None else
                                    {"optimizer": state["optimizer"], "scaler": state["scaler"]})
        if state is not None:
            state = {k: v for k, v in state.items() if k != "optimizer"}
        state = broadcast_object(self.world, state)
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.best_val_loss = state["best_val_loss"]
        self.skipped_steps = state["skipped_steps"]
        self.train_seconds = float(state.get("train_seconds", 0.0))  # absent in checkpoints before max_time
        wanted = getattr(self.loader, "shift_windows", None)
        self.loader.load_state_dict(state["loader"])
        if wanted is not None and wanted != self.loader.shift_windows:
            self._info(f"warning: train.shift_windows={str(wanted).lower()} is ignored: the run resumes with the "
                       f"windows it began with ({str(self.loader.shift_windows).lower()})")
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate(state["rng"]["python"])
        return int(state.get("world_size", 1))

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step_NNNNNNN (rank 0); every rank takes part in gathering the state and waits.

        State with NaN or inf is never written (the newest checkpoint stays the last good one): training stops."""
        engine_state = self.engine.state_dict()
        state = self.state_dict(engine_state)

        def write() -> Path:
            val = self.last_val_loss[1] if self.last_val_loss and self.last_val_loss[0] == self.step else None
            return ckpt.save_training_checkpoint(self.out_dir, self.step, engine_state["model"], self.cfg.model,
                                                 self.cfg, state, self.tokenizer_dir, val, self.cfg.train.keep_last)

        try:
            path = on_main(self.world, write)  # a failure on rank 0 stops every rank with its message
        except ckpt.NonFiniteState as e:
            raise TrainingStopped(f"{e}. Lower optim.lr or check the data.") from None
        if dist.is_initialized() and self.world.distributed:
            dist.barrier()
        return path

    # ---- evaluation -----------------------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Loss, perplexity and bits per byte on the fixed validation windows (mean over all ranks)."""
        # eval_batches counts global batches, so the windows evaluated do not depend on how a batch is split
        # into micro batches and ranks.
        total, count = self.engine.eval_loss(self.loader.validation_batches(self.cfg.train.eval_batches * self.accum))
        val_loss = total / count
        record = {"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if not self.chat:  # a conversation's loss is over its assistant tokens only: no bytes to divide by
            record["val_bpb"] = val_loss / math.log(2) / self.dataset.bytes_per_token("val")
        return record

    def sample(self) -> str:
        """A short continuation of train.sample_prompt (top-k sampling with a fixed seed of its own, so it
        never touches the training RNG), or in fine-tuning the greedy reply to it as a user message. Every rank
        runs it: the logits and so the tokens agree."""
        from inference import Generator, SamplingParams

        t = self.cfg.train
        with self.engine.generation() as model:
            generator = Generator(model, self.tokenizer)
            if self.chat:  # the prompt is a user message; the sample is the reply, greedy
                return "".join(generator.chat([{"role": "user", "content": t.sample_prompt}], t.sample_tokens))
            done = generator.generate(t.sample_prompt, t.sample_tokens, SamplingParams(temperature=0.8, top_k=40),
                                      seed=0)
        return done[0].text

    # ---- when: small policies --------------------------------------------------------------------------------

    def should_log(self) -> bool:
        return self.step % self.cfg.train.log_interval == 0 or self.step == 1

    def should_save(self, halting: bool) -> bool:
        t = self.cfg.train
        return self.step % t.save_interval == 0 or self.step == t.max_steps or halting

    def should_evaluate(self, saving: bool) -> bool:
        """Every checkpoint is evaluated, so `best` compares them all."""
        t = self.cfg.train
        return self.step % t.eval_interval == 0 or self.step == t.max_steps or saving

    def should_halt(self) -> bool:
        """A signal on any rank, train.stop_at_step or train.max_time: save and exit at this step (every rank)."""
        return self._stop_requested() or self.step == self.cfg.train.stop_at_step or self.time_up()

    def time_up(self) -> bool:
        return self.cfg.train.max_time is not None and self.train_seconds >= self.cfg.train.max_time

    def lr(self) -> float:
        """The learning rate of the next step. With train.max_time the schedule runs over whichever budget ends
        first: past warmup, its position is max(step, train_seconds / max_time * max_steps), so a time-limited run
        still decays to min_lr as its time runs out."""
        t, step = self.cfg.train, float(self.step)
        if t.max_time is not None and self.step >= self.cfg.optim.warmup_steps:
            step = max(step, min(1.0, self.train_seconds / t.max_time) * (t.max_steps - 1))
        return lr_at(step, self.cfg.optim, t.max_steps)

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
        bar = tqdm(total=t.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.world.is_main and self.cfg.log.progress))
        last_ckpt: Path | None = None
        speed = Throughput()
        origin = self._now() - self.train_seconds
        try:
            while self.step < t.max_steps and not self.time_up():
                lr = self.lr()
                self.engine.set_lr(lr)
                result = self._train_step([self.loader.next_batch() for _ in range(self.accum)])
                self.step += 1
                self.tokens_seen += tokens_per_step
                speed.add(tokens_per_step)
                bar.update(1)
                self.train_seconds = self._now() - origin

                if not result.applied:
                    self._skipped(result)
                else:
                    self.bad_steps = 0
                    if self.should_log():
                        self._log_step(result, lr, speed.rate())
                        bar.set_postfix(loss=f"{result.loss:.3f}", tok_s=f"{speed.rate():,.0f}")
                        speed.reset()

                halting = self.should_halt()
                saving = self.should_save(halting)
                evaluating = self.should_evaluate(saving)
                if evaluating:
                    self._run_eval()
                if saving:
                    last_ckpt = self.save_checkpoint()
                if evaluating or saving:
                    speed.reset()  # evaluation and saving are not training throughput
                if halting and self.step < t.max_steps:
                    if self.time_up():
                        self._info(f"train.max_time ({t.max_time:g} s) reached at step {self.step}")
                    else:
                        self._info(f"stopped at step {self.step}; run the same command again to resume")
                    break
        finally:
            bar.close()
            self.metrics.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            self.close()
        final = self.last_val_loss[1] if self.last_val_loss and self.last_val_loss[0] == self.step else None
        return TrainResult(self.step, self.tokens_seen, final, last_ckpt, self.stop_signal)

    def _train_step(self, micro_batches: list) -> StepResult:
        """One optimizer step. Pretraining: the mean loss of equal micro batches. Fine-tuning: the mean over every
        target token of the global batch (micro batches and ranks hold different numbers of assistant tokens):
        each micro batch's summed loss weighted by world_size / global target count (train/engine.py)."""
        if not self.chat:
            return self.engine.train_step(micro_batches)
        count = torch.tensor(float(sum(count_targets(b) for b in micro_batches)), device=self.plan.device)
        if self.world.distributed:
            dist.all_reduce(count)
        weight = self.world.world_size / count.item() if count.item() else 0.0  # no targets: a zero update
        return self.engine.train_step(micro_batches, summed_next_token_loss, [weight] * len(micro_batches))

    def _skipped(self, result: StepResult) -> None:
        """Count a skipped (non-finite) step; after train.max_bad_steps in a row, save and stop."""
        self.bad_steps += 1
        self.skipped_steps += 1
        self._info(f"step {self.step}: non-finite loss {result.loss} or grad norm {result.grad_norm}; update skipped")
        self.metrics.log({"step": self.step, "skipped": 1, "loss": _json_num(result.loss),
                          "grad_norm": _json_num(result.grad_norm)})
        if self.bad_steps < self.cfg.train.max_bad_steps:
            return
        # Skipped updates left the weights and optimizer untouched: they are the last good ones.
        path = self.save_checkpoint()
        raise TrainingStopped(
            f"{self.bad_steps} non-finite steps in a row (train.max_bad_steps={self.cfg.train.max_bad_steps}); "
            f"stopped. Last good checkpoint: {path}. Lower optim.lr or check the data."
        )

    def _log_step(self, result: StepResult, lr: float, tokens_per_sec: float) -> None:
        record = {"step": self.step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                  "tokens": self.tokens_seen, "tokens_per_sec": tokens_per_sec}
        if self.peak_flops:
            record["mfu"] = tokens_per_sec * self.flops_per_token / (self.peak_flops * self.world.world_size)
        self.metrics.log(record)

    def _stop_requested(self) -> bool:
        """True when this rank or any other got SIGINT/SIGTERM: all ranks must stop (and save) at one step. The
        ranks also agree on the elapsed time (the longest), so train.max_time stops them all at the same step."""
        if self.world.distributed:
            agreed = torch.tensor([float(self.stop_signal or 0), self.train_seconds], dtype=torch.float64,
                                  device=self.plan.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            self.stop_signal = int(agreed[0].item()) or None
            self.train_seconds = float(agreed[1].item())
        return self.stop_signal is not None

    def _run_eval(self) -> None:
        record = self.evaluate()
        record.update(self.eval_tasks.run(self.engine, self.tokenizer))  # train.eval_tasks: eval/<task>/<metric>
        self.last_val_loss = (self.step, record["val_loss"])
        if self.best_val_loss is None or record["val_loss"] < self.best_val_loss:
            self.best_val_loss = record["val_loss"]
        self.metrics.log(record)
        text = self.sample() if self.cfg.train.sample_tokens > 0 else ""
        bpb = f"  bpb {record['val_bpb']:.4f}" if "val_bpb" in record else ""
        tasks = "".join(f"  {k.removeprefix('eval/')} {v:.4f}" for k, v in record.items() if k.startswith("eval/"))
        self._info(f"step {self.step}: val_loss {record['val_loss']:.4f}  ppl {record['val_ppl']:.2f}{bpb}{tasks}")
        if text:
            prompt = self.cfg.train.sample_prompt
            shown = f"{prompt}\n-> {text}" if self.chat else prompt + text
            self._info(f"sample: {json.dumps(shown)}")
            self.metrics.log_text("sample", shown, self.step)


def _json_num(x: float) -> float | str:
    """JSON has no NaN/inf: write them as strings."""
    return x if math.isfinite(x) else str(x)
