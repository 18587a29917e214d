"""The engine is reusable with another batch and loss: a masked-target objective (as supervised fine-tuning
needs) weights its micro batches by their target counts and gets the update of one big batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer
from train.engine import Engine
from train.parallel import Plan, World

IGNORE = -100
CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32)


def masked_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the micro batch's targets only (IGNORE marks positions that are not targets)."""
    x, y = batch
    return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def _engine() -> tuple[Transformer, Engine]:
    torch.manual_seed(0)
    model = Transformer(CFG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # the update is -lr * grad: it compares gradients
    return model, Engine(model, model, optimizer, Plan(World(), torch.device("cpu"), "none", "fp32"), grad_clip=0)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, CFG.vocab_size, (8, 17), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[:2, :] = IGNORE  # micro batch 0: no targets at all
    y[2:4, 3:] = IGNORE  # micro batch 1: 3 targets per row
    y[4:6, 12:] = IGNORE  # micro batch 2: 12 per row; micro batch 3: all 16
    return x, y


def test_weighted_micro_batches_equal_one_big_batch():
    x, y = _batch()
    big_model, big = _engine()
    big_result = big.train_step([(x, y)], masked_loss)
    micro = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]
    counts = [int((my != IGNORE).sum()) for _, my in micro]
    assert counts == [0, 6, 24, 32]
    # A micro batch without targets contributes nothing (its mean loss is NaN, its weight 0): skip it.
    kept = [(b, c) for b, c in zip(micro, counts, strict=True) if c]
    small_model, small = _engine()
    small_result = small.train_step([b for b, _ in kept], masked_loss, weights=[c / sum(counts) for _, c in kept])
    assert abs(small_result.loss - big_result.loss) < 1e-5
    for (name, a), b in zip(big_model.named_parameters(), small_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_a_mean_of_micro_batch_means_would_differ():
    """The guard for the test above: unweighted micro batches give another update, so the weights matter."""
    x, y = _batch()
    big_model, big = _engine()
    big.train_step([(x, y)], masked_loss)
    small_model, small = _engine()
    small.train_step([(x[i:i + 2], y[i:i + 2]) for i in range(2, 8, 2)], masked_loss)
    diff = max((a - b).abs().max().item() for a, b in zip(big_model.parameters(), small_model.parameters(),
                                                            strict=True))
    assert diff > 1e-4
