"""Rotary position embeddings (Su et al., 2021) in the Meta Llama convention.

Convention: channel pairs are adjacent, (x[2i], x[2i+1]) is rotated by angle pos * theta^(-2i/head_dim).
Hugging Face's Llama pairs x[i] with x[i + head_dim/2] instead; scripts/convert_hf.py permutes the wq/wk rows
between the two layouts, so nothing here depends on it. Frequency scaling for long contexts (Llama 3.1's
"llama3" rule) changes only the per-pair frequencies, so it lives in `scaled_frequencies` and nowhere else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import RopeScaling


def scaled_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling | None) -> torch.Tensor:
    """Apply RoPE frequency scaling to the per-pair inverse frequencies; "none" returns them unchanged.

    llama3 (Meta's Llama 3.1 reference): a pair whose wavelength 2*pi/f exceeds original_max_seq_len /
    low_freq_factor never completed a turn within the pretraining context, so it is slowed by `factor`; one
    shorter than original_max_seq_len / high_freq_factor is kept; in between, f blends linearly in
    original_max_seq_len / wavelength from f / factor to f.
    """
    if scaling is None or scaling.type == "none":
        return inv_freq
    old_len, factor = scaling.original_max_seq_len, scaling.factor
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0: fully scaled, 1: unchanged
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen < old_len / high, inv_freq, blended)
    return torch.where(wavelen > old_len / low, inv_freq / factor, out)


def rope_tables(head_dim: int, max_seq_len: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_seq_len, head_dim // 2), in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), scaled_frequencies(inv_freq, scaling))
    return angles.cos().float(), angles.sin().float()


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables as non-persistent buffers (rebuilt, never saved in checkpoints)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta, self.scaling = head_dim, max_seq_len, theta, scaling
        cos, sin = rope_tables(head_dim, max_seq_len, theta, scaling)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the tables in place (needed after building the model on the meta device)."""
        cos, sin = rope_tables(self.head_dim, self.max_seq_len, self.theta, self.scaling)
        self.cos = cos.to(self.cos.device)
        self.sin = sin.to(self.sin.device)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the tables to 3 significant digits; keep them fp32 (they are
        # applied in fp32 anyway) and let only device moves through.
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            self.reset_parameters()
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for the given positions: (T,) -> two (T, head_dim // 2) tensors."""
        return self.cos[positions], self.sin[positions]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (B, n_heads, T, head_dim) by per-position angles; computed in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, H, T, head_dim/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)
