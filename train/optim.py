"""The optimizer (AdamW, or Muon for the blocks' matrices with AdamW for the rest) and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimConfig
from train.muon import Muon


def uses_muon(name: str, p: torch.Tensor) -> bool:
    """The Muon rule: the 2-D weights inside the transformer blocks (attention and feed-forward projections).

    The token embedding is a lookup table, not a linear map, and the output head (tied to it or not) maps to
    the vocabulary; both stay with AdamW, as do the 1-D norm weights.
    """
    return name.startswith("layers.") and p.ndim == 2


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW: matrices (decayed) and everything else (norm weights, biases; embeddings unless configured).
    optim.name=muon: a third group, first, of the `uses_muon` matrices (decayed), which leave the AdamW groups.

    Tied weights appear once (named_parameters de-duplicates them), so a tied head follows the embedding rule.
    Empty groups are left out.
    """
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith("tok_embeddings.weight")
        if cfg.name == "muon" and uses_muon(name, p):
            muon.append(p)
        elif p.ndim >= 2 and (cfg.decay_embeddings or not is_embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "muon":
        groups.insert(0, {"params": muon, "weight_decay": cfg.weight_decay, "use_muon": True})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (the fused kernel on CUDA unless `cfg.fused` says otherwise), or Muon."""
    if cfg.name == "muon":
        return Muon(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.muon_momentum, betas=(cfg.beta1, cfg.beta2),
                    eps=cfg.eps)
    fused = (device_type == "cuda") if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused
    )


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based: the first update uses lr_at(0)).

    Linear warmup from lr/warmup to lr over `warmup_steps` updates, then
    - cosine: half-cosine from lr down to min_lr, reached at the last step;
    - wsd (warmup-stable-decay): flat at lr, then a linear decay to min_lr over the last
      decay_fraction * max_steps steps;
    - constant: flat at lr.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, int(cfg.decay_fraction * max_steps))
        decay_start = max_steps - decay_steps
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    span = max(1, max_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (Muon's groups too: its updates are scaled to AdamW's size, see
    train/muon.py)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
