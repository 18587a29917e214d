"""Chunked cross-entropy against the plain computation on the full logits: loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.loss import IGNORE_INDEX, chunked_cross_entropy


def _inputs(n: int = 37, dim: int = 16, vocab: int = 53, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=gen, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, dim, generator=gen)).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets):
    loss = fn(hidden, weight, targets)
    dh, dw = torch.autograd.grad(loss, (hidden, weight))
    return loss.detach(), dh, dw


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 36, 37, 1000])  # uneven last chunk, one chunk, no split
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_the_unchunked_loss_and_gradients(chunk_size, reduction):
    hidden, weight, targets = _inputs()
    targets[3] = IGNORE_INDEX  # ignored like F.cross_entropy does, in the sum and in the mean's count
    plain = _loss_and_grads(
        lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t, reduction=reduction), hidden, weight, targets
    )
    chunked = _loss_and_grads(
        lambda h, w, t: chunked_cross_entropy(h, w, t, reduction=reduction, chunk_size=chunk_size),
        hidden, weight, targets,
    )
    for got, expected, name in zip(chunked, plain, ("loss", "d hidden", "d weight"), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)


def test_leading_dimensions_and_no_grad():
    hidden, weight, targets = _inputs(n=24)
    expected = F.cross_entropy(F.linear(hidden, weight), targets)
    got = chunked_cross_entropy(hidden.view(4, 6, -1), weight, targets.view(4, 6), chunk_size=5)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # evaluation: no recomputation bookkeeping, same value
        torch.testing.assert_close(chunked_cross_entropy(hidden, weight, targets, chunk_size=5), expected)
    with pytest.raises(ValueError, match="reduction"):
        chunked_cross_entropy(hidden, weight, targets, reduction="none")


@pytest.mark.parametrize("tied", [False, True])
def test_model_hidden_path_matches_the_logits_path(make_model, tied):
    """Transformer(return_hidden=True) + the chunked loss over model.output.weight gives the loss and every
    parameter's gradient of the plain logits path; a tied head's gradient sums both of its uses."""
    model = make_model(tie_embeddings=tied).train()
    tokens = torch.randint(0, model.cfg.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = grads(lambda: F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()))
    hidden = model(x, return_hidden=True)
    assert hidden.shape == (3, 11, model.cfg.dim)
    chunked_loss, chunked_grads = grads(
        lambda: chunked_cross_entropy(model(x, return_hidden=True), model.output.weight, y, chunk_size=7)
    )
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert chunked_grads.keys() == plain_grads.keys()
    assert ("output.weight" in plain_grads) is not tied  # tied: one parameter, named tok_embeddings.weight
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_matches_the_unchunked_loss():
    """Under autocast the head matmul runs in bf16 in both paths (replayed as such in backward) and the loss in
    fp32: equal up to bf16 rounding of differently blocked matmuls."""
    hidden, weight, targets = _inputs(n=64, dim=32, vocab=97)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _loss_and_grads(lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t), hidden, weight, targets)
        chunked = _loss_and_grads(lambda h, w, t: chunked_cross_entropy(h, w, t, chunk_size=10), hidden, weight,
                                  targets)
    assert chunked[0].dtype == torch.float32
    for got, expected in zip(chunked, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-3)
