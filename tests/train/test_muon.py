"""Muon: the Newton-Schulz orthogonalization, which parameters it gets, and real training with exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.errors import ConfigError
from model import Transformer
from model.checkpoint import find_checkpoint, load_model
from model.config import ModelConfig
from train.checkpoint import load_training_state
from train.config import OptimConfig
from train.muon import Muon, orthogonalize
from train.optim import build_optimizer, param_groups
from train.trainer import train

from .conftest import tiny_config

# After 5 iterations every singular value not tiny relative to the Frobenius norm lies in this band (see
# NS_COEFFS): the iteration trades exact convergence to 1 for speed.
BAND = (0.6, 1.25)


def _with_spectrum(m: int, n: int, singular_values: torch.Tensor, gen: torch.Generator):
    """A random (m, n) matrix U diag(s) V^T with the given singular values; returns it, U and V."""
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(singular_values.double()) @ v.T, u, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(256, 64), (64, 256), (192, 512), (128, 128)])
def test_newton_schulz_singular_values_near_one(shape, dtype):
    """Gaussian tall and wide matrices, and a square one with singular values spread over [0.05, 1] (a square
    Gaussian matrix has singular values near 0, which no 5-step iteration lifts): every output singular value is
    in BAND, computed in `dtype`, and the singular vectors are kept (U^T O V is diagonal)."""
    gen = torch.Generator().manual_seed(0)
    m, n = shape
    if m == n:
        g, u, v = _with_spectrum(m, n, torch.linspace(0.05, 1.0, m), gen)
    else:
        g = torch.randn(m, n, generator=gen, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        v = vh.T
    out = orthogonalize(g.float(), dtype=dtype)
    assert out.dtype == torch.float32 and out.shape == shape
    s = torch.linalg.svdvals(out.double())
    assert BAND[0] <= s.min() and s.max() <= BAND[1], (s.min().item(), s.max().item())
    core = u.T @ out.double() @ v  # diag(p(s)) for the polynomial p the iteration applies to singular values
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < (0.05 if dtype == torch.bfloat16 else 1e-4)


def test_newton_schulz_keeps_the_input_dtype_and_scale_invariance():
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    assert orthogonalize(g.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(orthogonalize(g), orthogonalize(1000 * g), rtol=0, atol=1e-5)
    assert torch.count_nonzero(orthogonalize(torch.zeros(8, 4))) == 0  # a zero gradient is no update


def _groups_by_name(model, cfg: OptimConfig) -> list[tuple[bool, float, set[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g.get("use_muon", False), g["weight_decay"], {names[id(p)] for p in g["params"]})
            for g in param_groups(model, cfg)]


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_grouping(tied):
    """Muon: the blocks' attention and feed-forward matrices. AdamW: embedding, head (tied or not), norms."""
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
                                    max_seq_len=16, tie_embeddings=tied))
    groups = _groups_by_name(model, OptimConfig(name="muon", weight_decay=0.1))
    matrices = {f"layers.{i}.{m}.weight" for i in range(2)
                for m in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                          "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    norms = {f"layers.{i}.{n}.weight" for i in range(2) for n in ("attention_norm", "ffn_norm")} | {"norm.weight"}
    if tied:  # the head is the embedding: one parameter, AdamW, undecayed (optim.decay_embeddings=false)
        assert groups == [(True, 0.1, matrices), (False, 0.0, {"tok_embeddings.weight"} | norms)]
    else:
        assert groups == [(True, 0.1, matrices), (False, 0.1, {"output.weight"}),
                          (False, 0.0, {"tok_embeddings.weight"} | norms)]
    # Every trainable parameter is in exactly one group.
    assert sum(len(g[2]) for g in groups) == len(dict(model.named_parameters()))
    adamw = _groups_by_name(model, OptimConfig(name="adamw", weight_decay=0.1))
    assert [g[0] for g in adamw] == [False, False] and matrices <= adamw[0][2]
    assert isinstance(build_optimizer(model, OptimConfig(name="muon"), "cpu"), Muon)


def test_muon_update_is_the_scaled_orthogonalized_momentum():
    """First step from zero momentum: W -= lr * 0.2 * sqrt(max(m, n)) * NS(g + mu * g) (Nesterov), after the
    decoupled decay; the AdamW group takes torch.optim.AdamW's exact step."""
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(48, 16, generator=gen, requires_grad=True), torch.randn(16, generator=gen, requires_grad=True)
    w.grad, b.grad = torch.randn(48, 16, generator=gen), torch.randn(16, generator=gen)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = Muon([{"params": [w], "use_muon": True, "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.1}],
               lr=0.02, momentum=0.9)
    opt.step()
    expected = w0 * (1 - 0.02 * 0.1) - 0.02 * 0.2 * math.sqrt(48) * orthogonalize(w.grad * 1.9)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-6)
    ref = b0.clone().requires_grad_()
    ref.grad = b.grad.clone()
    torch.optim.AdamW([ref], lr=0.02, betas=(0.9, 0.95), weight_decay=0.1).step()
    torch.testing.assert_close(b.detach(), ref.detach(), rtol=0, atol=1e-7)
    assert set(opt.state[w]) == {"momentum_buffer"} and set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [b], "use_muon": True}], lr=0.1)


def test_muon_config_errors_name_the_key(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"optim\.muon_momentum must be in \[0, 1\), got 1\.0"):
        tiny_config(tmp_path, tiny_data, "optim.name=muon", "optim.muon_momentum=1.0")
    with pytest.raises(ConfigError, match=r"optim\.fused=true is for AdamW"):
        tiny_config(tmp_path, tiny_data, "optim.name=muon", "optim.fused=true")
    with pytest.raises(ConfigError, match=r"optim\.name"):
        tiny_config(tmp_path, tiny_data, "optim.name=sgd")


def _records(out_dir) -> list[dict]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "mfu")} for r in records]


@pytest.mark.slow
def test_muon_training_learns_and_resumes_exactly(tmp_path, tiny_data):
    """optim.name=muon with 2 micro batches per step: the loss falls, and 6 steps + resume to 12 give the same
    per-step losses and bit-identical weights as 12 in one go (momentum and AdamW state restored by name)."""
    args = ("optim.name=muon", "train.max_steps=12", "train.eval_interval=6", "train.save_interval=6",
            "train.micro_batch_size=4", "train.sample_tokens=0", "model.tie_embeddings=true")
    train(tiny_config(tmp_path / "whole", tiny_data, *args))
    train(tiny_config(tmp_path / "split", tiny_data, *args, "train.stop_at_step=6"))
    assert train(tiny_config(tmp_path / "split", tiny_data, *args)).step == 12
    whole, split = _records(tmp_path / "whole"), _records(tmp_path / "split")
    assert split == whole  # equality, not tolerance
    losses = [r["loss"] for r in whole if "loss" in r]
    assert losses[-1] < losses[0] - 1.5  # from about ln(384) = 5.95
    model_a, _ = load_model(tmp_path / "whole")
    model_b, _ = load_model(tmp_path / "split")
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state = load_training_state(find_checkpoint(tmp_path / "split"))["optimizer"]
    assert "momentum_buffer" in state["state"]["layers.0.attention.wq.weight"]
    assert "exp_avg" in state["state"]["tok_embeddings.weight"]
    assert [g["use_muon"] for g in state["param_groups"]] == [True, False]
