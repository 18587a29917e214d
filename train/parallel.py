"""Where and how the model runs: process group, device, precision, and the ordered application of
activation checkpointing -> torch.compile (per block) -> data parallelism (DDP or FSDP2)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.config import Config
from train.errors import ConfigError


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


def init_world(device_pref: str, parallel: str = "auto") -> World:
    """Read the torchrun environment and join the process group (nccl on CUDA, gloo on CPU).

    FSDP needs a process group even in a single process; one of size 1 is created for it.
    """
    world = World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )
    if (world.distributed or parallel == "fsdp") and not dist.is_initialized():
        use_cuda = device_pref.startswith("cuda") or (device_pref == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        backend = "nccl" if use_cuda else "gloo"
        if world.distributed:
            dist.init_process_group(backend=backend)
        else:
            store = dist.HashStore()
            dist.init_process_group(backend=backend, store=store, rank=0, world_size=1)
    return world


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(pref: str, world: World) -> torch.device:
    """`auto` picks CUDA (this rank's GPU), then MPS, then CPU."""
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", world.local_rank)
        if torch.backends.mps.is_available() and not world.distributed:
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={pref} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", world.local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={pref} but MPS is not available")
    return device


def resolve_precision(pref: str, device: torch.device) -> str:
    """`auto` means bf16 on GPUs that support it, else fp32. Also checks the choice fits the device."""
    if pref == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if pref == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU (use bf16 or fp32 on CPU)")
    return pref


def autocast(device: torch.device, precision: str):
    """Autocast context for the forward pass (fp32 runs without one)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_parallel(mode: str, world: World) -> str:
    """`auto`: DDP when there are several processes. DDP of one process is the plain model; FSDP of one
    process is kept (it shards nothing but exercises the same code path, e.g. on one GPU)."""
    if mode == "auto":
        return "ddp" if world.distributed else "none"
    if mode == "ddp" and not world.distributed:
        return "none"
    return mode


def _checkpointed(forward):
    """Wrap a block's forward so its activations are recomputed in backward (non-reentrant)."""

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_parallelism(
    model: nn.Module, cfg: Config, device: torch.device, world: World, precision: str
) -> nn.Module:
    """Apply, in this order: activation checkpointing per block, torch.compile per block, then DDP or FSDP2.

    The module tree (and so the state_dict names) is unchanged by the first two steps; DDP returns a
    wrapper, FSDP2 shards in place. The caller keeps the unwrapped model for checkpoints and sampling.
    """
    if cfg.train.activation_checkpointing:
        for block in model.layers:
            block.forward = _checkpointed(block.forward)
    if cfg.train.compile:
        for block in model.layers:
            block.compile()
    mode = resolve_parallel(cfg.train.parallel, world)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 compute with fp32 master weights and fp32 gradient reduction.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16" else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model


def grad_sync(model: nn.Module, enabled: bool):
    """Context for one micro batch: skip gradient all-reduce on all but the last micro batch."""
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
