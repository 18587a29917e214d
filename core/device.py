"""Device and dtype names, resolved in one place for training, generation, export and the benchmarks.

A bad name is a ConfigError that names the key or flag it came from (`key`), e.g. "train.device" or "--device".
"""

from __future__ import annotations

import contextlib
import re

import torch

from core.errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Precision names as configs and flags spell them, with the long torch spellings accepted as well.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def check_device_name(name: str, key: str = "device") -> None:
    """ConfigError unless `name` is one of the device names this project runs on (xla, meta, ... are not)."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ConfigError(f"{key} must be {DEVICE_NAMES}, got {name!r}")


def resolve_device(name: str = "auto", key: str = "device", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """`auto` picks CUDA (this rank's GPU), then MPS (single process only), then the CPU.

    An explicit device must exist. `cuda` means the GPU of this rank's LOCAL_RANK; `cuda:N` with several
    processes would put them all on one GPU and is refused.
    """
    check_device_name(name, key)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available() and world_size == 1:
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif world_size > 1:
            raise ConfigError(f"{key}={name} would put all {world_size} processes on one GPU: use cuda or auto "
                              "(each rank takes the GPU of its LOCAL_RANK)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name} but MPS is not available")
    return device


def resolve_dtype(name: str, device: torch.device, key: str = "dtype") -> torch.dtype:
    """`auto`: bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, fp32 on the CPU; or a named dtype."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"{key} must be auto, fp32, bf16 or fp16, got {name!r}")
    return DTYPES[name]


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles). Without it (AVX2, older AVX-512)
    oneDNN emulates bf16 and a training step runs slower than in fp32: 2.8x slower fwd+bwd, and a 2048^3 bf16
    matmul ~50x slower, on the 2-core AVX2 EPYC our numbers come from (benchmarks/train_throughput.py)."""
    cpu = getattr(torch, "cpu", None)
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def autocast(device: torch.device, precision: str):
    """Autocast context for a forward pass in `precision` (fp32 runs without one)."""
    if DTYPES[precision] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
