"""Free memory of a device, asked before anything big is allocated, so that a model too large for the machine is
one clear error naming what to change instead of an allocation failure (or the kernel's OOM killer) later."""

from __future__ import annotations

import os

import torch

from core.errors import UserError

GIB = 2**30


def available_bytes(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device`: MemAvailable of the host for the CPU, the driver's free
    memory for a CUDA GPU; None where it cannot be known (MPS, an unreadable /proc)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free physical pages (an underestimate: no page cache counted)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size(n: int) -> str:
    """Bytes as a short human-readable size."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def require_memory(needed: int, device: torch.device, what: str, advice: str, error: type[UserError] = UserError):
    """Raise `error` when `needed` bytes are more than `device` has free: "`what` needs about X of <device>
    memory, only Y is free: `advice`". Nothing happens when free memory cannot be known."""
    free = available_bytes(device)
    if free is not None and needed > free:
        raise error(f"{what} needs about {size(needed)} of {device.type} memory, only {size(free)} is free: {advice}")
