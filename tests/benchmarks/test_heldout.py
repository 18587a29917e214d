"""benchmarks/heldout.py scores every token of a held-out text exactly once, with the context its windows give;
benchmarks/speedrun.py holds out the end of the corpus."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.heldout import bits_per_byte, heldout_nats, window_starts


@pytest.mark.parametrize(("n_inputs", "context"), [(10, 4), (11, 4), (9, 5), (3, 8), (8, 8), (100, 7)])
def test_windows_cover_every_position_and_end_at_the_last(n_inputs, context):
    starts = window_starts(n_inputs, context)
    length = min(context, n_inputs)
    assert starts[0] == 0 and starts[-1] + length == n_inputs
    assert all(0 < b - a <= max(1, context // 2) for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("context", [1, 2, 5, 16, 64, 500])
def test_a_bigram_model_scores_the_exact_sum_whatever_the_windows(context):
    torch.manual_seed(0)
    table = torch.randn(11, 11)  # logits of the next token depend on the current token only
    ids = torch.randint(11, (300,)).tolist()
    nats, count = heldout_nats(lambda x: table[x], ids, context, batch_size=3)
    exact = F.cross_entropy(table[torch.tensor(ids[:-1])], torch.tensor(ids[1:]), reduction="sum").item()
    assert count == len(ids) - 1 and nats == pytest.approx(exact, rel=1e-6)


def test_a_context_longer_than_the_text_is_one_causal_pass():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=13, n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(13, (40,))
    with torch.no_grad():
        logits = model(input_ids=ids[None, :-1]).logits[0]
    exact = F.cross_entropy(logits, ids[1:], reduction="sum").item()
    nats, count = heldout_nats(lambda x: model(input_ids=x).logits, ids.tolist(), 64)
    assert count == 39 and nats == pytest.approx(exact, rel=1e-5)
    # Shorter windows see less context: a different, still complete score.
    short, count = heldout_nats(lambda x: model(input_ids=x).logits, ids.tolist(), 8)
    assert count == 39 and short != pytest.approx(exact, rel=1e-6)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2) * 12, 4) == pytest.approx(3.0)


def test_the_speedrun_holds_out_the_files_end_and_cuts_between_characters(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # it imports its siblings
    from benchmarks.speedrun import split_corpus

    text = "".join(f"line {i}: naïve café {'é' * (i % 3)}\n" for i in range(2000))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    train_file, train, heldout = split_corpus(corpus, 0.1, tmp_path / "work")
    assert train + heldout == text and train_file.read_text(encoding="utf-8") == train
    assert (tmp_path / "work" / "heldout.txt").read_text(encoding="utf-8") == heldout
    n = len(text.encode())
    assert int(0.9 * n) <= len(train.encode()) <= int(0.9 * n) + 1  # at 90% of the bytes, moved past a 2-byte char
    mtime = train_file.stat().st_mtime_ns
    split_corpus(corpus, 0.1, tmp_path / "work")
    assert train_file.stat().st_mtime_ns == mtime  # unchanged files are not rewritten: the dataset stays fresh
