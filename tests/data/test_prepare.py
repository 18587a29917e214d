"""prepare_dataset and its CLI: exact round trip, per-document split, idempotence, atomicity, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data.encode
import data.prepare_data
from core.errors import DataError
from data.encode import is_validation
from data.prepare_data import main, prepare_dataset
from data.shards import load_manifest, open_shard

ROOT = Path(__file__).resolve().parents[2]


def prepare(corpus: Path, out: Path, tok, **kw) -> Path:
    kw.setdefault("workers", 1)
    return prepare_dataset([str(corpus)], out, tokenizer_dir=tok.directory, progress=False, **kw)


def split_documents(out: Path, split: str) -> list[list[int]]:
    """Token lists of a split's documents, cut after each EOS (2); checks the stream ends with EOS."""
    m = load_manifest(out)
    shards = [open_shard(out / s["file"]) for s in m["shards"] if s["split"] == split]
    stream = np.concatenate(shards).tolist() if shards else []
    assert not stream or stream[-1] == m["eos_id"]
    docs, start = [], 0
    for i, t in enumerate(stream):
        if t == m["eos_id"]:
            docs.append(stream[start : i + 1])
            start = i + 1
    return docs


def test_round_trip_gives_back_every_document_followed_by_eos(tmp_path, corpus_dir, corpus_docs, data_tokenizer):
    out = prepare(corpus_dir, tmp_path / "ds", data_tokenizer, val_fraction=0.25)
    m = load_manifest(out)
    for split, want_val in (("train", False), ("val", True)):
        expected = [d for d in corpus_docs if is_validation(d.encode(), 0.25) == want_val]
        docs = split_documents(out, split)
        assert [data_tokenizer.decode(d[:-1]) for d in docs] == expected
        assert all(d[-1] == data_tokenizer.eos_id and data_tokenizer.eos_id not in d[:-1] for d in docs)
        assert m["documents"][split] == len(expected) > 0
        assert m["tokens"][split] == sum(map(len, docs)) == sum(s["tokens"] for s in m["shards"] if s["split"] == split)
        assert m["source_bytes"][split] == sum(len(d.encode()) for d in expected)
        assert m["bytes_per_token"][split] == pytest.approx(m["source_bytes"][split] / m["tokens"][split])
    assert 10 <= m["documents"]["val"] <= 50  # about a quarter of 120
    assert m["tokenizer"]["hash"] == data_tokenizer.content_hash
    assert (m["vocab_size"], m["eos_id"], m["dtype"], m["header_bytes"]) == (400, 2, "uint16", 32)
    assert m["replaced_bytes"] == 0 and m["val_fraction"] == 0.25


def test_split_depends_on_content_not_order(tmp_path, corpus_docs, data_tokenizer, write_corpus):
    a = prepare(write_corpus(tmp_path / "a", corpus_docs), tmp_path / "da", data_tokenizer, val_fraction=0.25)
    b = prepare(write_corpus(tmp_path / "b", corpus_docs[::-1]), tmp_path / "db", data_tokenizer, val_fraction=0.25)
    val_a = {tuple(d) for d in split_documents(a, "val")}
    assert val_a == {tuple(d) for d in split_documents(b, "val")}


def test_small_shards_and_parallel_workers_give_identical_output(tmp_path, corpus_dir, data_tokenizer, monkeypatch):
    monkeypatch.setattr(data.prepare_data, "BATCH_CHARS", 500)  # many work items, so ordering is exercised
    one = prepare(corpus_dir, tmp_path / "one", data_tokenizer, val_fraction=0.1, shard_tokens=300)
    two = prepare(corpus_dir, tmp_path / "two", data_tokenizer, val_fraction=0.1, shard_tokens=300, workers=2)
    m1, m2 = load_manifest(one), load_manifest(two)
    assert len(m1["shards"]) > 3 and m1["shards"] == m2["shards"]
    for s in m1["shards"]:
        assert (one / s["file"]).read_bytes() == (two / s["file"]).read_bytes()


def test_rerun_is_a_noop_and_force_rebuilds(tmp_path, corpus_dir, data_tokenizer):
    out = prepare(corpus_dir, tmp_path / "ds", data_tokenizer)
    before = os.stat(out / "manifest.json").st_ino
    prepare(corpus_dir, out, data_tokenizer)
    assert os.stat(out / "manifest.json").st_ino == before  # untouched
    prepare(corpus_dir, out, data_tokenizer, force=True)
    assert os.stat(out / "manifest.json").st_ino != before  # rewritten
    (corpus_dir / "a_9999.txt").write_text("a new document")
    with pytest.raises(DataError, match=r"built from other inputs.*--force"):
        prepare(corpus_dir, out, data_tokenizer)


def test_interrupted_run_leaves_no_dataset(tmp_path, corpus_dir, data_tokenizer, monkeypatch):
    real = data.encode.encode_documents
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real(*args)

    monkeypatch.setattr(data.prepare_data, "BATCH_CHARS", 500)
    monkeypatch.setattr(data.encode, "encode_documents", failing)
    with pytest.raises(RuntimeError, match="injected"):
        prepare(corpus_dir, tmp_path / "ds", data_tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no dataset, no temporary leftovers

    monkeypatch.setattr(data.encode, "encode_documents", real)
    out = prepare(corpus_dir, tmp_path / "ds", data_tokenizer)
    manifest = (out / "manifest.json").read_text()
    calls.clear()
    monkeypatch.setattr(data.encode, "encode_documents", failing)
    with pytest.raises(RuntimeError, match="injected"):
        prepare(corpus_dir, out, data_tokenizer, force=True)
    assert (out / "manifest.json").read_text() == manifest  # a failed rebuild keeps the old dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]


def test_vocab_size_trains_the_tokenizer_into_the_dataset(tmp_path, corpus_dir):
    from Tokenizer import Tokenizer

    out = prepare_dataset([str(corpus_dir)], tmp_path / "ds", vocab_size=400, workers=1, progress=False)
    tok = Tokenizer.load(out / "tokenizer")
    assert (tok.vocab_size, load_manifest(out)["tokenizer"]["hash"]) == (400, tok.content_hash)
    assert load_manifest(out)["tokenizer"]["path"] == "tokenizer"
    prepare_dataset([str(corpus_dir)], out, vocab_size=400, workers=1, progress=False)  # no-op: same tokenizer
    with pytest.raises(DataError, match="holds a 400-token tokenizer, not 500"):
        prepare_dataset([str(corpus_dir)], out, vocab_size=500, workers=1, progress=False)


def test_missing_tokenizer_and_bad_arguments(tmp_path, corpus_dir, data_tokenizer):
    with pytest.raises(DataError, match=r"no tokenizer at .*--vocab-size"):
        prepare_dataset([str(corpus_dir)], tmp_path / "ds", progress=False)
    with pytest.raises(DataError, match="val_fraction must be in"):
        prepare(corpus_dir, tmp_path / "ds", data_tokenizer, val_fraction=1.0)
    with pytest.raises(DataError, match=r"does not exist: .*missing"):
        prepare(tmp_path / "missing", tmp_path / "ds", data_tokenizer)
    assert not (tmp_path / "ds").exists()


def test_empty_corpus(tmp_path, data_tokenizer):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.txt").write_text("")
    with pytest.raises(DataError, match="hold no documents"):
        prepare(tmp_path / "corpus", tmp_path / "ds", data_tokenizer)
    assert not (tmp_path / "ds").exists()


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path, corpus_dir, data_tokenizer):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(corpus_dir, tmp_path / "ds", data_tokenizer)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_replaced_bytes_are_counted_in_the_manifest(tmp_path, data_tokenizer):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "latin1.txt").write_bytes("café crème\n".encode("latin-1"))
    out = prepare(tmp_path / "c", tmp_path / "ds", data_tokenizer, val_fraction=0.0)
    assert load_manifest(out)["replaced_bytes"] == 2
    (doc,) = split_documents(out, "train")
    assert data_tokenizer.decode(doc) == "caf\ufffd cr\ufffdme\n"


def test_cli_in_process(tmp_path, corpus_dir, data_tokenizer, capsys):
    args = ["--input", str(corpus_dir), "--out", str(tmp_path / "ds"), "--tokenizer", str(data_tokenizer.directory),
            "--workers", "1", "--no-progress", "--shard-tokens", "1000"]
    assert main(args) == 0
    assert len(json.loads((tmp_path / "ds" / "manifest.json").read_text())["shards"]) > 1
    assert main([*args[:2], str(corpus_dir / "nope.jsonl"), *args[2:]]) == 2
    assert capsys.readouterr().err.strip().startswith("error: source path does not exist")


def test_cli_as_a_file_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    result = subprocess.run(
        [sys.executable, "data/prepare_data.py", "--input", str(bad), "--out", str(tmp_path / "ds"),
         "--vocab-size", "400", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    message = f"error: {bad}:2: no 'text' field (set --text-field / data.text_field)"
    assert result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "ds").exists()


def test_a_dataset_built_from_other_inputs_is_refused_naming_what_differs(tmp_path, corpus_dir, data_tokenizer):
    out = prepare(corpus_dir, tmp_path / "ds", data_tokenizer, val_fraction=0.1)
    (corpus_dir / "a_0000.txt").write_text("longer than it was before, so its size differs\n" * 3)
    (corpus_dir / "a_9999.txt").write_text("a new document")
    with pytest.raises(DataError) as err:
        prepare(corpus_dir, out, data_tokenizer, val_fraction=0.2)
    message = str(err.value)
    assert f"source {os.path.abspath(corpus_dir / 'a_9999.txt')} added" in message
    assert f"source {os.path.abspath(corpus_dir / 'a_0000.txt')} changed (size " in message
    assert "val_fraction 0.1 -> 0.2" in message and message.endswith("--force) or remove it")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["inputs"]  # as written before manifests recorded their inputs
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="built by an older version that did not record its inputs"):
        prepare(corpus_dir, out, data_tokenizer, val_fraction=0.2)
