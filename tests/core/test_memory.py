"""core.memory: the free-memory query behind the pre-flight checks, and the error it raises."""

from __future__ import annotations

import os

import pytest
import torch

from core.errors import ConfigError
from core.memory import available_bytes, require_memory

CPU = torch.device("cpu")


def _total_ram() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_cpu_free_memory_is_positive_and_at_most_the_ram():
    free = available_bytes(CPU)
    assert free is not None and 0 < free <= _total_ram()


def test_more_than_the_ram_is_refused_with_what_and_advice():
    with pytest.raises(ConfigError, match=r"^a model needs about .* of cpu memory, only .* is free: shrink it$"):
        require_memory(2 * _total_ram(), CPU, "a model", "shrink it", ConfigError)


def test_what_fits_passes():
    require_memory(1 << 20, CPU, "a small model", "n/a")


def test_unknown_free_memory_never_refuses():
    require_memory(1 << 62, torch.device("meta"), "anything", "n/a")  # no free memory to compare with
