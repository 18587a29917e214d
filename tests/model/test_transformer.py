"""Whole-model properties: parameter and FLOP accounting, causality, autocast, dropout."""

import pytest
import torch

# Tiny config counted by hand: dim 64, 2 layers, 4 query heads and 2 kv heads of 16, SwiGLU width 96, vocab 101.
SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96, vocab_size=101)
ATTN = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64  # wq, wk, wv, wo = 12288
FFN = 3 * 64 * 96  # w1, w3, w2 = 18432
BLOCK = ATTN + FFN + 2 * 64  # plus two RMSNorm weights = 30848
BODY = 2 * BLOCK + 64  # plus the final norm = 61760
EMB = 101 * 64  # 6464


@pytest.mark.parametrize(
    ("tie", "total", "without_embeddings"),
    [(False, BODY + 2 * EMB, BODY + EMB), (True, BODY + EMB, BODY)],  # 74688/68224 and 68224/61760
    ids=["untied", "tied"],
)
def test_num_params_by_hand(make_model, tie, total, without_embeddings):
    model = make_model(tie_embeddings=tie, **SHAPE)
    assert model.num_params() == total
    assert model.num_params(include_embeddings=False) == without_embeddings
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.cfg.num_params() == total  # the arithmetic count, without building anything
    assert model.cfg.block_params() == BLOCK


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_flops_per_token_by_hand(make_model, tie):
    model = make_model(tie_embeddings=tie, **SHAPE)
    seq_len = 32
    n_matmul = BODY + EMB  # every weight but the embedding lookup; the head counts whether tied or not
    attention = 12 * 2 * 4 * 16 * seq_len  # 12 * n_layers * n_heads * head_dim * seq_len = 49152
    assert model.flops_per_token(seq_len) == 6 * n_matmul + attention == 458_496


@pytest.mark.parametrize("n_kv_heads", [4, 1], ids=["mha", "mqa"])
@torch.no_grad()
def test_changing_a_future_token_leaves_earlier_logits_unchanged(make_model, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    tokens = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    t = 9
    changed[:, t] = (tokens[:, t] + 1) % 101
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 1e-4  # every later position does change


@torch.no_grad()
def test_rows_of_a_batch_are_independent(make_model):
    model = make_model()
    tokens = torch.randint(0, 101, (3, 12), generator=torch.Generator().manual_seed(0))
    batched = model(tokens)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], model(tokens[i : i + 1]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bf16_autocast_on_cpu(make_model):
    model = make_model(n_kv_heads=2)
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
        model.setup_cache(batch_size=2, max_len=16)
        prefill = model(tokens[:, :11], start_pos=0)
        step = model(tokens[:, 11:], start_pos=torch.tensor(11))
    assert logits.dtype == torch.bfloat16
    for out in (logits, prefill, step):
        assert torch.isfinite(out).all()
    assert (logits.float() - reference).abs().max().item() < 0.1  # bf16 rounding, not a different model


def test_dropout_only_in_training_mode(make_model):
    tokens = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(0))
    model = make_model(dropout=0.5)
    no_dropout = make_model(dropout=0.0)  # same seed: same weights
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(tokens), model(tokens))
        torch.testing.assert_close(model(tokens), no_dropout(tokens), rtol=0, atol=0)
        model.train()
        torch.manual_seed(1)
        a = model(tokens)
        b = model(tokens)
    assert not torch.allclose(a, b)
    assert (a - no_dropout(tokens)).abs().max() > 1e-3


def test_backward_reaches_every_parameter(make_model):
    model = make_model(n_kv_heads=2, tie_embeddings=True).train()
    tokens = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
