"""The training engine: model, optimizer, precision, parallelism and compile, behind a few calls.

    engine = build_engine(cfg, plan)                  # meta device -> (FSDP | materialize) -> init/load -> (DDP)
    result = engine.train_step(micro_batches)         # one optimizer step (forward/backward/clip/update)
    total, count = engine.eval_loss(batches)          # summed loss and target count over all ranks
    state = engine.state_dict(); engine.load_state_dict(state)   # full (unsharded) state, collective

The loop (train/trainer.py) decides when to call these and never sees DDP or FSDP. Another objective (say,
supervised fine-tuning with masked targets) is another `loss_fn` and batch for the same engine.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.device import autocast
from core.errors import CheckpointError
from model import Transformer
from model.checkpoint import WEIGHTS, check_weights, model_state_dict, read_model_config, read_weights
from model.loss import IGNORE_INDEX, chunked_cross_entropy
from train.config import Config
from train.optim import build_optimizer, set_lr
from train.parallel import (
    Plan,
    apply_parallelism,
    broadcast_object,
    full_model_state,
    full_optimizer_state,
    grad_sync,
    load_full_model_state,
    load_full_optimizer_state,
    on_main,
    reshard,
)

# loss_fn(model, batch) -> the loss of one micro batch (a scalar tensor that backward() can start from).
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def next_token_loss(model: nn.Module, batch: Sequence[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of a micro batch (x, y) or (x, y, doc_ids) in fp32, the mean (or sum) over its
    targets: y == IGNORE_INDEX adds nothing (masked targets in fine-tuning), and doc_ids packs several documents
    per row with attention kept inside each (model/documents.py). The head's logits are made in chunks, never all
    at once (model/loss.py)."""
    x, y, *rest = batch
    hidden = model(x, return_hidden=True, doc_ids=rest[0] if rest else None)
    return chunked_cross_entropy(hidden, _head_weight(model), y, reduction=reduction)


def summed_next_token_loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """next_token_loss summed over the targets: with train_step's weights = world_size / global target count, the
    step minimizes the mean over every target of the global batch, however unevenly micro batches hold them."""
    return next_token_loss(model, batch, reduction="sum")


def count_targets(batch: Sequence[torch.Tensor]) -> int:
    """Targets of a micro batch (x, y[, doc_ids]) that count in the loss."""
    return int((batch[1] != IGNORE_INDEX).sum())


def _head_weight(model: nn.Module) -> torch.Tensor:
    """The output head's weight, read after the forward: under FSDP the all-gathered one (the root unit stays
    unsharded until backward, whose reduce-scatter then takes its gradient); under DDP the wrapped module's."""
    return getattr(model, "module", model).output.weight


def _to(batch: Any, device: torch.device) -> Any:
    """A batch (a tensor, or a tuple/list of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


@dataclass
class StepResult:
    loss: float  # mean loss of the global batch
    grad_norm: float  # global gradient norm before clipping
    applied: bool  # False when a non-finite loss or norm skipped the update


class Engine:
    """A model ready to train: its (possibly wrapped) module, optimizer, grad scaler and execution plan.

    `raw_model` is the unwrapped model (sharded in place under FSDP): checkpoints and generation use it.
    `model` is what forward passes go through (the DDP wrapper, or raw_model itself).
    """

    def __init__(self, raw_model: Transformer, model: nn.Module, optimizer: torch.optim.Optimizer, plan: Plan,
                 grad_clip: float):
        self.raw_model, self.model, self.optimizer, self.plan = raw_model, model, optimizer, plan
        self.grad_clip = grad_clip
        self.scaler = torch.amp.GradScaler(plan.device.type, enabled=plan.precision == "fp16")

    @property
    def device(self) -> torch.device:
        return self.plan.device

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def train_step(self, micro_batches: Sequence[Any], loss_fn: LossFn | None = None,
                   weights: Sequence[float] | None = None) -> StepResult:
        """Forward/backward over the micro batches, gradient clipping, and the optimizer update.

        The step minimizes sum_i weights[i] * loss_fn(batch_i), averaged over ranks. By default each weight is
        1 / len(micro_batches): the mean over every token of the global batch when micro batches hold equal
        numbers of targets. An objective whose micro batches hold unequal numbers of targets passes
        weights[i] = targets_i / targets of this rank's whole step, scaled as its global mean requires.
        A non-finite loss or gradient norm skips the update. `loss_fn` defaults to next_token_loss.
        """
        loss_fn = loss_fn or next_token_loss
        self.model.train()
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            with grad_sync(self.model, enabled=i == n - 1):
                with autocast(self.device, self.plan.autocast_precision):
                    loss = loss_fn(self.model, _to(batch, self.device))
                    loss = loss / n if weights is None else loss * weights[i]
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.plan.world.distributed:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= self.plan.world.world_size
        self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
            grad_norm = grad_norm.full_tensor()
        loss_value, norm_value = loss_sum.item(), grad_norm.item()
        # Under fp16 the scaler itself skips steps with inf gradients while it calibrates its scale.
        applied = math.isfinite(loss_value) and (math.isfinite(norm_value) or self.plan.precision == "fp16")
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, norm_value, applied)

    @torch.no_grad()
    def eval_loss(self, batches: Iterable[Sequence[torch.Tensor]]) -> tuple[float, int]:
        """(summed next-token loss, number of targets) over micro batches (x, y[, doc_ids]), added up over all
        ranks; masked targets (IGNORE_INDEX) are not counted."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in batches:
            batch = _to(batch, self.device)
            with autocast(self.device, self.plan.autocast_precision):
                total += next_token_loss(self.model, batch, reduction="sum").double()
            count += (batch[1] != IGNORE_INDEX).sum()
        if self.plan.world.distributed:
            dist.all_reduce(total)
            dist.all_reduce(count)
        reshard(self.model)
        self.model.train()
        return total.item(), int(count.item())

    @contextlib.contextmanager
    def generation(self) -> Iterator[Transformer]:
        """The unwrapped model for KV-cached generation inside the training run; training resumes as before.

        Under FSDP every rank must run the same forwards (they all-gather the weights). With FSDP's bf16 policy
        the queries are bf16 while the KV cache follows the fp32 master weights: autocast makes attention take
        both in bf16.
        """
        precision = self.plan.precision if self.plan.parallel == "fsdp" else "fp32"
        try:
            with torch.no_grad(), autocast(self.device, precision):
                yield self.raw_model
        finally:
            self.raw_model.clear_cache()  # training must never run through a KV cache
            self.raw_model.train()
        reshard(self.raw_model)

    def state_dict(self) -> dict[str, Any]:
        """Full weights and optimizer/scaler state on rank 0 (empty on the others); collective under FSDP.

        The optimizer state is keyed by parameter name and unsharded, so it is portable between none, DDP and
        FSDP and across world sizes; None while the optimizer has taken no step."""
        return {
            "model": full_model_state(self.raw_model),
            "optimizer": full_optimizer_state(self.raw_model, self.optimizer),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Load what state_dict() saved, given on rank 0 (other ranks pass None); collective. Weights are
        optional here ("model" may be absent): build_engine loads them before any wrapping."""
        has = broadcast_object(self.plan.world, None if state is None else {
            "model": "model" in state, "optimizer": state.get("optimizer") is not None, "scaler": state["scaler"]})
        state = state or {}
        if has["model"]:
            load_full_model_state(self.raw_model, state.get("model", {}))
        if has["optimizer"]:
            load_full_optimizer_state(self.raw_model, self.optimizer, state.get("optimizer") or {})
        self.scaler.load_state_dict(has["scaler"])


# ---- building ---------------------------------------------------------------------------------------------------


def checkpoint_weights(cfg: Config, weights_from: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's full weights on the CPU, checked against the run's model config (rank 0)."""
    saved = read_model_config(weights_from).architecture()
    ours = cfg.model.architecture()
    diff = [f"{k} {saved[k]} (checkpoint) != {ours[k]} (model.{k})" for k in ours if saved[k] != ours[k]]
    if diff:
        raise CheckpointError(f"checkpoint {weights_from} has a different model architecture: {'; '.join(diff)}")
    weights = read_weights(weights_from)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg.model).state_dict().items()}
    check_weights(cfg.model, expected, weights, str(weights_from / WEIGHTS))
    return weights


def build_engine(cfg: Config, plan: Plan, weights_from: Path | None = None) -> Engine:
    """Build on the meta device, materialize on the plan's device, then init the weights (seeded by
    train.seed) or load them from `weights_from`, apply activation checkpointing / compile / DDP or FSDP, and
    make the optimizer.

    Under FSDP the model is sharded while still on the meta device, so no GPU ever holds all of it: rank 0
    makes the full weights on the CPU (the seeded init, or the checkpoint's) and each rank loads its shards.
    Otherwise every rank inits the same seeded weights, also on the CPU, then moves them to its device; a
    checkpoint is read by rank 0 and broadcast. So a seed gives the same initial weights on any device and under
    any parallelism (a GPU's random generator draws other numbers than the CPU's).
    """
    world = plan.world
    if plan.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with torch.device("meta"):
        model = Transformer(cfg.model)
    if plan.parallel == "fsdp":
        apply_parallelism(model, cfg.train, plan)
        model.to_empty(device=plan.device)
        model.rope.reset_parameters()  # the non-persistent RoPE tables are in no state dict
        torch.manual_seed(cfg.train.seed)
        weights = on_main(world, lambda: _full_weights(cfg, weights_from))
        load_full_model_state(model, weights or {})
        # Rank 0 alone drew the init: give every rank the RNG state it would have after drawing it too.
        torch.set_rng_state(broadcast_object(world, torch.get_rng_state()))
        wrapped = model
    else:
        model.to_empty(device="cpu")
        torch.manual_seed(cfg.train.seed)
        model.init_weights()
        model.to(plan.device)  # in place: tied weights stay tied
        if weights_from is not None:
            weights = on_main(world, lambda: checkpoint_weights(cfg, weights_from))
            load_full_model_state(model, weights or {})
        wrapped = apply_parallelism(model, cfg.train, plan)
    optimizer = build_optimizer(model, cfg.optim, plan.device.type)
    return Engine(model, wrapped, optimizer, plan, cfg.optim.grad_clip)


def _full_weights(cfg: Config, weights_from: Path | None) -> dict[str, torch.Tensor]:
    """Rank 0's full weights for an FSDP model: the checkpoint's, or a seeded init on the CPU (the same numbers
    as a single-process CPU run)."""
    if weights_from is not None:
        return checkpoint_weights(cfg, weights_from)
    with torch.device("meta"):
        full = Transformer(cfg.model)
    full.to_empty(device="cpu")
    full.init_weights()
    return model_state_dict(full)
