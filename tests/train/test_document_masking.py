"""train.document_masking in pretraining: windows come with document ids cut at EOS, and the loss of a window is
the sum of its documents' losses computed alone."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from data.dataset import TokenDataset
from model import Transformer
from tests.train.conftest import tiny_config
from train.dataloader import DataLoader
from train.trainer import train


def test_windows_carry_document_ids_that_restart_after_each_eos(tiny_data):
    dataset = TokenDataset(tiny_data.dataset_dir)
    plain = DataLoader(dataset, micro_batch_size=4, seq_len=32, seed=0)
    masked = DataLoader(dataset, micro_batch_size=4, seq_len=32, seed=0, document_masking=True)
    for _ in range(10):
        (x, y), (mx, my, doc) = plain.next_batch(), masked.next_batch()
        assert torch.equal(x, mx) and torch.equal(y, my)  # the same windows, only the ids are added
        boundaries = torch.cumsum((x == dataset.eos_id).int(), dim=1)
        assert torch.equal(doc, boundaries - (x == dataset.eos_id).int())
    assert any((x == dataset.eos_id).any() for x, _ in [plain.next_batch() for _ in range(5)])


@torch.no_grad()
def test_a_masked_window_loss_is_the_sum_of_its_documents_alone(tiny_data):
    dataset = TokenDataset(tiny_data.dataset_dir)
    cfg = tiny_config(tiny_data.dataset_dir / "unused", tiny_data).model
    model = Transformer(cfg).eval()
    loader = DataLoader(dataset, micro_batch_size=4, seq_len=32, seed=0, document_masking=True)
    x, y, doc = loader.next_batch()
    packed = F.cross_entropy(model(x, doc_ids=doc).transpose(1, 2), y, reduction="none")
    for b in range(4):
        for d in doc[b].unique():
            where = (doc[b] == d).nonzero().flatten()
            alone = model(x[b, where][None])[0]
            torch.testing.assert_close(packed[b, where], F.cross_entropy(alone, y[b, where], reduction="none"),
                                       rtol=1e-5, atol=1e-5)


def test_training_with_document_masking_learns(tmp_path, tiny_data):
    train(tiny_config(tmp_path / "run", tiny_data, "train.document_masking=true", "train.sample_tokens=0"))
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in evals if "val_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
