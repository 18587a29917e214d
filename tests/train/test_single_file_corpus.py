"""A corpus that is one novel-sized text file trains with no extra setting, and switching data.sources on the
command line prepares a new dataset under the default dataset_dir instead of failing on the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import run_train
from data.pieces import cut_document
from data.shards import load_manifest
from data.splits import MAX_VAL_SHARE, MIN_VAL_TOKENS
from tests.novel import make_novel

CONFIG = """\
model: {dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, vocab_size: 384, multiple_of: 32, max_seq_len: 64}
data: {sources: [novel.txt], workers: 1}
train: {batch_size: 8, micro_batch_size: 8, seq_len: 32, max_steps: 6, eval_interval: 3, eval_batches: 2,
        save_interval: 6, log_interval: 1, sample_tokens: 0, device: cpu}
optim: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 2}
log: {tensorboard: false, progress: false}
"""


def evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


@pytest.mark.slow
def test_one_text_file_trains_and_other_sources_get_their_own_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default out/ and out/datasets/ land here
    novel = make_novel(400_000, seed=1)  # about 50 pieces: the split fallback is likely needed
    Path("novel.txt").write_text(novel, encoding="utf-8")
    Path("other.txt").write_text(make_novel(150_000, seed=2), encoding="utf-8")
    Path("novel.yaml").write_text(CONFIG)

    assert run_train.main(["--config", "novel.yaml"]) == 0  # default data.val_fraction (0.005)
    (first,) = Path("out/datasets").iterdir()
    assert first.name.startswith("novel-")
    m = load_manifest(first)
    assert m["documents"]["train"] > 0 and m["documents"]["val"] > 0
    assert m["documents"]["total"] == m["pieces"]["pieces"] == len(cut_document(novel))
    assert [r["step"] for r in evals(Path("out/novel"))] == [3, 6]

    # Other sources: a second dataset beside the first, which stays as it was.
    before = (first / "manifest.json").read_text()
    assert run_train.main(["--config", "novel.yaml", "data.sources=[other.txt]", "train.out_dir=out/other"]) == 0
    datasets = sorted(Path("out/datasets").iterdir())
    assert len(datasets) == 2 and (first / "manifest.json").read_text() == before
    (second,) = (d for d in datasets if d != first)
    assert load_manifest(second)["sources"] == ["other.txt"] and evals(Path("out/other"))[-1]["step"] == 6

    # Rerunning the first command finds its run finished and its dataset up to date.
    assert run_train.main(["--config", "novel.yaml"]) == 0
    assert (first / "manifest.json").read_text() == before and len(list(Path("out/datasets").iterdir())) == 2


NOVEL_CONFIG = """\
model: {dim: 64, n_layers: 2, n_heads: 4, vocab_size: 512, multiple_of: 32, max_seq_len: 256}
data: {sources: [novel.txt], workers: 1, tokenizer_sample_mb: 1}
train: {batch_size: 16, micro_batch_size: 16, seq_len: 256, max_steps: 2, eval_interval: 1, eval_batches: 4,
        log_interval: 1, sample_tokens: 0, device: cpu}
optim: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 1}
log: {tensorboard: false, progress: false}
"""


@pytest.mark.slow
def test_a_novel_trains_with_the_default_val_fraction_and_a_large_micro_batch(tmp_path, monkeypatch):
    """A 1 MB novel at data.val_fraction 0.005: the hash picks about one 2K-token piece for validation, less than
    one micro batch of 16 x 257 tokens; the val split is topped up from the novel's end, so training runs and
    evaluates."""
    monkeypatch.chdir(tmp_path)
    Path("novel.txt").write_text(make_novel(1_000_000, seed=3), encoding="utf-8")
    Path("novel.yaml").write_text(NOVEL_CONFIG)
    assert run_train.main(["--config", "novel.yaml"]) == 0
    (dataset,) = Path("out/datasets").iterdir()
    m = load_manifest(dataset)
    micro_batch = 16 * 257
    moved = m["split_fallback"]
    assert moved["split"] == "val" and m["tokens"]["val"] - moved["tokens"] < micro_batch  # the hash alone: too few
    assert m["tokens"]["val"] >= min(MIN_VAL_TOKENS, MAX_VAL_SHARE * m["tokens"]["total"]) > 2 * micro_batch
    assert m["val_fraction"] == 0.005 and m["documents"]["train"] > 50
    records = evals(Path("out/novel"))
    assert [r["step"] for r in records] == [1, 2] and all(0 < r["val_bpb"] < 9 for r in records)
