"""Document masking: packed documents are computed exactly as each document alone."""

import pytest
import torch

from model.documents import doc_ids_from_eos, document_mask, document_positions


def test_doc_ids_from_eos_puts_each_eos_in_the_document_it_ends():
    x = torch.tensor([[5, 7, 0, 8, 0, 0, 9]])
    assert doc_ids_from_eos(x, eos_id=0).tolist() == [[0, 0, 0, 1, 1, 2, 3]]


def test_positions_restart_per_document_and_mask_is_block_causal():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0]]
    mask = document_mask(ids)[0, 0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for lo, hi in ((0, 3), (3, 5), (5, 6)):
        expected[lo:hi, lo:hi] = torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril()
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@torch.no_grad()
def test_packed_documents_give_each_document_its_own_logits(make_model, n_kv_heads):
    model = make_model(n_kv_heads=n_kv_heads)
    g = torch.Generator().manual_seed(0)
    lengths = [[7, 12, 5, 8], [32], [1, 30, 1]]  # several, one filling the row, length-1 documents
    rows, doc_rows = [], []
    for row in lengths:
        docs = [torch.randint(1, 101, (n,), generator=g) for n in row]
        rows.append((torch.cat(docs), docs))
        doc_rows.append(torch.cat([torch.full((n,), i) for i, n in enumerate(row)]))
    x = torch.stack([r[0] for r in rows])
    packed = model(x, doc_ids=torch.stack(doc_rows))
    for b, (_, docs) in enumerate(rows):
        start = 0
        for doc in docs:
            alone = model(doc[None])[0]
            torch.testing.assert_close(packed[b, start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
            start += len(doc)
    # Without the mask the later documents see the earlier ones: the test can tell the difference.
    assert not torch.allclose(model(x)[0, 7:19], model(rows[0][1][1][None])[0], atol=1e-3)


def test_doc_ids_refused_with_a_cache(make_model):
    model = make_model()
    model.setup_cache(1, 16)
    with pytest.raises(ValueError, match="doc_ids"):
        model(torch.ones(1, 4, dtype=torch.long), doc_ids=torch.zeros(1, 4, dtype=torch.long))
