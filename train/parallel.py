"""Where and how the model runs: process group, device, precision, the ordered application of
activation checkpointing -> torch.compile (per block) -> data parallelism (DDP or FSDP2), and the gathering /
scattering of full model and optimizer state for checkpoints.

Checkpoints always hold *full* (unsharded) state keyed by parameter name, whatever the parallelism: weights as
model.safetensors, AdamW state as `{"state": {fqn: {...}}, "param_groups": [{"params": [fqn, ...], ...}]}`.
Under FSDP the shards are gathered to rank 0 (on the CPU) to save, and rank 0 broadcasts the full state that
each rank then shards to resume, so a run can resume with another world size or parallel mode.
See docs/scaling.md for when a sharded torch.distributed.checkpoint format would be needed instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.device import cpu_has_native_bf16, resolve_device
from core.errors import ConfigError, UserError
from model.checkpoint import drop_tied_head, restore_tied_head
from train.config import TrainConfig

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env() -> World:
    """The World described by torchrun's environment variables (one process when they are absent)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_world(device_pref: str, parallel: str = "auto") -> World:
    """Read the torchrun environment and join the process group (nccl on CUDA, gloo on CPU).

    The parallel mode and device are checked first, so a bad one is a ConfigError before any process waits on
    another.
    FSDP needs a process group even in a single process; one of size 1 is created for it.
    """
    world = world_from_env()
    mode = resolve_parallel(parallel, world)
    device = resolve_device(device_pref, "train.device", world.local_rank, world.world_size)
    if (world.distributed or mode == "fsdp") and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL starts, so each rank talks from its own GPU
        backend = "nccl" if device.type == "cuda" else "gloo"
        if world.distributed:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return world


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Plan:
    """Where and how this run executes, resolved once from the config and the launch: every later decision reads
    it instead of resolving again."""

    world: World
    device: torch.device
    parallel: str  # the resolved mode: none, ddp or fsdp
    precision: str  # the resolved precision: fp32, bf16 or fp16

    @property
    def autocast_precision(self) -> str:
        """Precision of the autocast context: FSDP2's bf16 policy casts the parameters itself."""
        return "fp32" if self.parallel == "fsdp" and self.precision == "bf16" else self.precision


def resolve_plan(train: TrainConfig, world: World) -> Plan:
    """Device, parallel mode and precision for `train` (the train config section) launched as `world`."""
    device = resolve_device(train.device, "train.device", world.local_rank, world.world_size)
    parallel = resolve_parallel(train.parallel, world)
    return Plan(world, device, parallel, resolve_precision(train.precision, device, parallel))


def resolve_precision(pref: str, device: torch.device, parallel: str = "none") -> str:
    """`auto` means bf16 autocast on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 or AMX,
    core.device.cpu_has_native_bf16), else fp32: an emulated bf16 step is slower than fp32, not faster. The
    rule reads the hardware, not a timing, so every rank and every resume on the same machine type agrees.
    Also checks the choice fits the device and the parallel mode (the resolved one, see resolve_parallel)."""
    if pref == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if pref == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU (use bf16 or fp32 on CPU)")
    if pref == "fp16" and parallel == "fsdp":
        # GradScaler's inf check would see only this rank's gradient shard, so ranks could disagree on
        # skipping a step; bf16 needs no scaler.
        raise ConfigError("train.precision=fp16 is not supported with train.parallel=fsdp: use bf16")
    return pref


def resolve_parallel(mode: str, world: World) -> str:
    """The data-parallel mode actually used: none, ddp or fsdp.

    `auto`: DDP when there are several processes, else none. DDP of one process is the plain model. FSDP of
    one process is kept (it shards nothing but runs the same code path, e.g. to test a config on one GPU).
    `none` with several processes is an error: each rank would train its own copy on its own data.
    """
    if mode == "auto":
        return "ddp" if world.distributed else "none"
    if mode == "none" and world.distributed:
        raise ConfigError(
            f"train.parallel=none but {world.world_size} processes were launched: use auto, ddp or fsdp, "
            "or launch a single process"
        )
    if mode == "ddp" and not world.distributed:
        return "none"
    return mode


def _checkpointed(forward):
    """Wrap a block's forward so its activations are recomputed in backward (non-reentrant)."""

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_parallelism(model: nn.Module, train: TrainConfig, plan: Plan) -> nn.Module:
    """Apply, in this order: activation checkpointing per block, torch.compile per block, then DDP or FSDP2.

    The order matters: the checkpoint wraps the block's own forward, compile then captures the block with its
    recomputation, and sharding comes last so FSDP's all-gather / reduce-scatter hooks run around each
    compiled block rather than inside the graph. The module tree (and so the state_dict names) is unchanged
    by the first two steps.

    DDP returns a wrapper around a materialized model. FSDP2 shards in place, a materialized model or, better,
    one on the meta device (see train/engine.py build_engine), which then never exists whole on any GPU.
    Each transformer block is one FSDP unit and the root (embedding, final norm, head) another, so a tied
    embedding/head is one parameter in the root unit. The caller keeps the unwrapped model for checkpoints.
    """
    if train.activation_checkpointing:
        for block in model.layers:
            block.forward = _checkpointed(block.forward)
    if train.compile:
        for block in model.layers:
            block.compile()
    device, world = plan.device, plan.world
    if plan.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # The only buffers are the RoPE tables, identical on every rank: nothing to broadcast each step.
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    if plan.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world.world_size,))
        # bf16: parameters are all-gathered and used in bf16, while the sharded master weights, their
        # gradients and the gradient reduce-scatter stay fp32. fp32: no casting at all.
        if plan.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            mp = MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free the root's all-gathered parameters after forward passes without backward (evaluation, sampling).

    FSDP2 keeps the root unit unsharded after forward, expecting a backward; until resharded, its parameters
    are not the sharded ones the optimizer holds."""
    if is_sharded(model):
        model.reshard()


def grad_sync(model: nn.Module, enabled: bool):
    """Context for one micro batch: skip gradient all-reduce on all but the last micro batch.

    DDP: no_sync() (gradients accumulate locally; the last backward all-reduces the sum). FSDP2: gradients
    accumulate unsharded and the last backward reduce-scatters them. Either way every micro batch's
    gradient reaches the optimizer exactly once.
    """
    if enabled:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return _restore_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _restore_sync(model):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ---- rank 0 decides ----------------------------------------------------------------------------------------


def broadcast_object(world: World, obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled; for small things only)."""
    if not (world.distributed and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(world: World, fn: Callable[[], T]) -> T | None:
    """Call `fn` on rank 0 only (None elsewhere). A UserError it raises is raised on every rank, so the run
    stops everywhere with the same message instead of leaving the other ranks waiting in a collective."""
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except UserError as e:
            error = e
    error = broadcast_object(world, error)
    if error is not None:
        raise error
    return result


# ---- full state for checkpoints ----------------------------------------------------------------------------


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights to save on rank 0 as contiguous CPU tensors ({} on other ranks); collective under FSDP.

    `model` is the unwrapped model (sharded in place or not). A tied head is left out: it is the embedding.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    return {k: v.detach().contiguous() for k, v in drop_tied_head(state, model.cfg).items()}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights given on rank 0 (other ranks pass {}) into every rank's model, sharding them under
    FSDP; collective when a process group exists. A tied head is restored from the embedding."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = restore_tied_head(state, model.cfg)
    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=dist.is_initialized()))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """AdamW state keyed by parameter name, full and on the CPU on rank 0 ({} elsewhere); collective under FSDP.

    None while the optimizer has taken no step: the state_dict API would otherwise initialize it with a
    zero-learning-rate step, which would change this run's bias correction.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not optimizer.state:  # the same on every rank: they step together
        return None
    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict | None) -> None:
    """Load a name-keyed full optimizer state given on rank 0 (other ranks pass {}); None leaves the fresh
    optimizer untouched. Collective when a process group exists: all ranks pass None, or none does."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if state is None:
        return
    set_optimizer_state_dict(model, optimizer, state, options=_options(broadcast_from_rank0=dist.is_initialized()))
