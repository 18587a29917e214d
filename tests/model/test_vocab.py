"""resize_vocab / set_rows_to_mean: old rows and old logits untouched, new rows the mean, tied heads stay tied."""

from __future__ import annotations

import pytest
import torch

from model.vocab import resize_vocab, set_rows_to_mean
from tests.helpers import randomize


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_growing_keeps_old_logits_and_adds_mean_rows(make_model, tie):
    model = make_model(tie_embeddings=tie)
    randomize(model, seed=3)
    old_embedding = model.tok_embeddings.weight.detach().clone()
    old_head = model.output.weight.detach().clone()
    tokens = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(tokens)

    resize_vocab(model, 105)

    assert model.cfg.vocab_size == 105
    assert model.tok_embeddings.weight.shape == (105, 64) and model.output.weight.shape == (105, 64)
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    assert "output.weight" not in dict(model.named_parameters()) or not tie
    assert torch.equal(model.tok_embeddings.weight[:101], old_embedding)
    assert torch.equal(model.output.weight[:101], old_head)
    torch.testing.assert_close(model.tok_embeddings.weight[101:], old_embedding.mean(0).expand(4, -1))
    torch.testing.assert_close(model.output.weight[101:], old_head.mean(0).expand(4, -1))
    with torch.no_grad():
        after = model(tokens)
    torch.testing.assert_close(after[..., :101], before, rtol=0, atol=0)
    # A new token's logit is the mean of the old logits: an average token, not a random favourite.
    torch.testing.assert_close(after[..., 101], before.mean(-1), rtol=1e-5, atol=1e-5)
    # The grown model trains: gradients reach the new rows.
    model.train()
    model(torch.tensor([[101, 102, 5]]))[0, -1, 103].backward()
    assert model.tok_embeddings.weight.grad[101].abs().sum() > 0


def test_shrinking_is_refused_and_same_size_is_a_no_op(make_model):
    model = make_model()
    weight = model.tok_embeddings.weight
    resize_vocab(model, 101)
    assert model.tok_embeddings.weight is weight
    with pytest.raises(ValueError, match="only grows"):
        resize_vocab(model, 100)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_set_rows_to_mean(make_model, tie):
    model = make_model(tie_embeddings=tie)
    randomize(model, seed=4)
    old = model.tok_embeddings.weight.detach().clone()
    set_rows_to_mean(model, 97, 101)
    assert torch.equal(model.tok_embeddings.weight[:97], old[:97])
    torch.testing.assert_close(model.tok_embeddings.weight[97:], old[:97].mean(0).expand(4, -1))
    torch.testing.assert_close(model.output.weight[97:], model.output.weight[:97].mean(0).expand(4, -1))
    with pytest.raises(ValueError, match="within"):
        set_rows_to_mean(model, 99, 102)
