"""Small helpers shared by test packages."""

import torch


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every weight random and large, norm gains included: a swapped or misplaced tensor changes the logits, and
    logits lie far apart, so greedy choices do not hinge on float rounding."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.2 * noise if p.ndim == 1 else 0.15 * noise)
