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


_SDPA = torch.nn.functional.scaled_dot_product_attention


def sdpa_with_transposed_output(*args, **kwargs) -> torch.Tensor:
    """scaled_dot_product_attention whose output (..., H, T, D) is laid out as (..., T, H, D) in memory, as CUDA's
    memory-efficient and flash kernels return it (the CPU's are contiguous); the values are the same. Monkeypatch
    it over torch.nn.functional.scaled_dot_product_attention to run the CUDA layout on a CPU."""
    y = _SDPA(*args, **kwargs)
    return y.transpose(-3, -2).contiguous().transpose(-3, -2)
