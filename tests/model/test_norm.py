"""RMSNorm against its defining formula."""

import pytest
import torch

from model.norm import RMSNorm


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rmsnorm_matches_formula(eps):
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 5, 48) * 3 + 1  # a non-zero mean: RMSNorm must not subtract it
    expected = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)


def test_rmsnorm_output_has_unit_rms_with_unit_weight():
    norm = RMSNorm(64, eps=1e-8)
    x = torch.randn(10, 64) * 7
    rms = norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(10), rtol=1e-5, atol=1e-5)


def test_rmsnorm_bf16_input_is_normalized_in_fp32():
    # Small bf16 activations: a bf16 mean of squares would lose them; the fp32 path gives the fp32 answer.
    norm = RMSNorm(32).to(torch.bfloat16)
    x = (torch.randn(4, 32) * 1e-3).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_reset_parameters_restores_ones():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.fill_(3.0)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(8))
