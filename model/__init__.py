"""Llama-style decoder-only transformer: architecture only (no devices, paths or training flags)."""

from model.config import ModelConfig
from model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
