"""Weight tying and init_weights(): shared storage, meta-device construction, initial loss, residual std."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import Transformer
from model.rope import rope_tables


def test_tied_embeddings_share_storage(make_model):
    model = make_model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    assert "output.weight" not in dict(model.named_parameters())  # counted once


def test_untied_embeddings_are_distinct(make_model):
    model = make_model(tie_embeddings=False)
    assert model.output.weight is not model.tok_embeddings.weight
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    assert not torch.equal(model.output.weight, model.tok_embeddings.weight)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_meta_build_to_empty_init_weights(make_config, tie):
    cfg = make_config(tie_embeddings=tie)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    if tie:  # one storage: a step on the embedding is a step on the head
        with torch.no_grad():
            model.tok_embeddings.weight[0, 0] = 123.0
        assert model.output.weight[0, 0].item() == 123.0
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    assert torch.equal(model.rope.cos, cos) and torch.equal(model.rope.sin, sin)
    assert torch.isfinite(model(torch.randint(0, cfg.vocab_size, (1, 8)))).all()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_initial_loss_is_close_to_log_vocab(make_model, tie):
    vocab = 512
    model = make_model(tie_embeddings=tie, vocab_size=vocab)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (8, 33), generator=g)
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.5


def test_residual_projections_have_depth_scaled_std(make_model):
    n_layers, std = 4, 0.02
    model = make_model(dim=128, n_layers=n_layers, init_std=std)
    residual_std = std / math.sqrt(2 * n_layers)
    for layer in model.layers:
        for w in (layer.attention.wo.weight, layer.feed_forward.w2.weight):
            assert w.std().item() == pytest.approx(residual_std, rel=0.05)
            assert abs(w.mean().item()) < residual_std / 10
        for w in (layer.attention.wq.weight, layer.attention.wk.weight, layer.feed_forward.w1.weight):
            assert w.std().item() == pytest.approx(std, rel=0.05)
        assert torch.equal(layer.attention_norm.weight, torch.ones(128))
        assert torch.equal(layer.ffn_norm.weight, torch.ones(128))
    assert model.tok_embeddings.weight.std().item() == pytest.approx(std, rel=0.05)


def test_init_weights_reinitializes_everything(make_model):
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    model.init_weights()
    for name, p in model.named_parameters():
        expected_ones = name.endswith("norm.weight")
        assert torch.equal(p, torch.ones_like(p)) == expected_ones, name
