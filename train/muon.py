"""Muon for the transformer blocks' hidden matrices and AdamW for everything else, as one optimizer.

Muon (MomentUm Orthogonalized by Newton-Schulz) keeps a Nesterov momentum of each weight matrix's gradient and
applies, instead of the momentum itself, its nearest semi-orthogonal matrix U V^T (for momentum = U S V^T):
every singular direction moves by the same amount, so the rare directions are not drowned by the dominant
ones. U V^T is approximated by a few Newton-Schulz iterations, which need only matrix products (no SVD).

Which parameters get Muon is the caller's choice, made per parameter group (`use_muon`); see
train/optim.py:param_groups. One class steps both kinds of group so the existing checkpoint code (the
torch.distributed.checkpoint state_dict API, keyed by parameter name) saves and restores it like AdamW:
the state is `momentum_buffer` for Muon parameters and `step`, `exp_avg`, `exp_avg_sq` for AdamW ones.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

# Quintic Newton-Schulz coefficients (a, b, c) of X <- a X + b (X X^T) X + c (X X^T)^2 X, tuned (Jordan et al.,
# 2024) for speed rather than exact convergence: the slope a = 3.4 at 0 lifts small singular values fast, and
# after 5 steps every singular value that is not tiny relative to the Frobenius norm lies in about [0.68, 1.2]
# (not exactly 1, which Muon does not need).
NS_COEFFS = (3.4445, -4.7750, 2.0315)

# Update RMS matching (Liu et al., 2025, "Muon is Scalable for LLM Training"): an (m, n) orthogonalized matrix
# has RMS 1/sqrt(max(m, n)); scaling it by 0.2 * sqrt(max(m, n)) gives an RMS of 0.2, the typical size of an
# AdamW update. Both kinds of group can then share one learning rate (optim.lr) and one schedule.
RMS_MATCH = 0.2


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T for the 2-D matrix g = U S V^T, by `steps` Newton-Schulz iterations (same dtype as g).

    Computed in `dtype`; by default bf16 on CUDA (the iteration tolerates it and tensor cores make it cheap),
    fp32 elsewhere (CPUs multiply bf16 matrices slowly).
    """
    a, b, c = NS_COEFFS
    if dtype is None:
        dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(dtype)
    wide = x.shape[0] <= x.shape[1]
    if not wide:  # iterate on the wide orientation, so X X^T is the smaller (min, min) Gram matrix
        x = x.mT
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm = 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.mT).to(g.dtype)


def _orthogonalize_full(u: torch.Tensor, steps: int) -> torch.Tensor:
    """`orthogonalize` of the whole matrix, also for an FSDP2 shard (a DTensor): the orthogonalization mixes all
    rows, so the shards are all-gathered, every rank orthogonalizes the full matrix and keeps its own rows.

    Cost under FSDP, per Muon matrix and step: one all-gather of the momentum (the size of the weight), and each
    rank computes the full Newton-Schulz (about 3 * steps * min(m, n)^2 * max(m, n) * 2 FLOPs) rather than 1/N
    of it. Splitting the matrices between ranks would remove the redundancy at the price of a second
    collective; at these sizes the iteration is a small fraction of the step's compute.
    """
    if isinstance(u, DTensor):
        full = orthogonalize(u.full_tensor(), steps)
        # src_data_rank=None: each rank slices its shard from its own (identical) copy, no communication.
        return distribute_tensor(full, u.device_mesh, u.placements, src_data_rank=None)
    return orthogonalize(u, steps)


class Muon(torch.optim.Optimizer):
    """Muon on the parameter groups with `use_muon: True` (2-D weights), AdamW on the others.

    Every group reads `lr` (set by the schedule each step) and `weight_decay` (decoupled: p *= 1 - lr * wd).
    Muon groups also read `momentum`, `nesterov`, `ns_steps`; AdamW groups `betas` and `eps`, with the update of
    torch.optim.AdamW (bias-corrected moments).
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        defaults = dict(lr=lr, weight_decay=weight_decay, use_muon=False, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, betas=betas, eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups hold 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            ortho = _orthogonalize_full(update, group["ns_steps"])
            p.mul_(1 - lr * wd)
            p.add_(ortho, alpha=-lr * RMS_MATCH * math.sqrt(max(p.shape)))

    def _adamw_step(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                # step as a float tensor, like torch's AdamW, so the checkpoint code treats both alike
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"].item()
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
