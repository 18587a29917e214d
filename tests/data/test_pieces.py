"""Large documents (a novel-sized single file) are cut into pieces: exact, reproducible, both splits non-empty, and
a small corpus's val split topped up from its end to enough tokens to evaluate on."""

from __future__ import annotations

import math

import numpy as np
import pytest

import data.prepare_data
from data.encode import is_validation
from data.pieces import MAX_DOCUMENT_CHARS, PIECE_CHARS, cut_document
from data.prepare_data import prepare_dataset
from data.shards import load_manifest, open_shard
from data.splits import MAX_VAL_SHARE, MIN_VAL_TOKENS
from tests.novel import make_novel
from Tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def novel() -> str:
    return make_novel(1_000_000)


@pytest.fixture(scope="module")
def novel_tokenizer(tmp_path_factory, novel) -> Tokenizer:
    return train_tokenizer(iter([novel[:200_000]]), 400, tmp_path_factory.mktemp("novel_tok") / "tok", progress=False)


def split_texts(out, tokenizer: Tokenizer, split: str) -> list[str]:
    """The decoded documents (pieces) of a split, in stream order, each cut at its EOS."""
    m = load_manifest(out)
    shards = [open_shard(out / s["file"]) for s in m["shards"] if s["split"] == split]
    stream = np.concatenate(shards) if shards else np.zeros(0, dtype=np.uint16)
    ends = np.flatnonzero(stream == m["eos_id"])
    assert len(ends) == m["documents"][split] and (not len(stream) or ends[-1] == len(stream) - 1)
    return [tokenizer.decode(doc[:-1].tolist()) for doc in np.split(stream, ends[:-1] + 1)] if len(ends) else []


def interleave_back(text: str, train: list[str], val: list[str]) -> list[str]:
    """Rebuild `text` from the two splits, each in source order: every step takes the split whose next piece comes
    next in the text. Fails if a piece is missing, duplicated or out of order."""
    pos, i, j, order = 0, 0, 0, []
    while pos < len(text):
        if i < len(train) and text.startswith(train[i], pos):
            order.append("train")
            pos, i = pos + len(train[i]), i + 1
        elif j < len(val) and text.startswith(val[j], pos):
            order.append("val")
            pos, j = pos + len(val[j]), j + 1
        else:
            raise AssertionError(f"no piece continues the text at character {pos}")
    assert (i, j) == (len(train), len(val))  # nothing left over
    return order


def expected_order(pieces: list[str], tokenizer: Tokenizer, val_fraction: float) -> list[str]:
    """The split of every piece under the documented rule, computed on the whole list at once (no streaming): by
    hash, then the shortest run of last pieces that brings val to min(MIN_VAL_TOKENS, ceil(MAX_VAL_SHARE x
    tokens)) moves to val, never leaving train empty; an empty train split takes the last piece."""
    order = ["val" if is_validation(p.encode(), val_fraction) else "train" for p in pieces]
    tokens = [len(tokenizer.encode(p)) + 1 for p in pieces]  # + EOS
    if val_fraction <= 0 or len(pieces) < 2:
        return order
    val = sum(t for t, s in zip(tokens, order, strict=True) if s == "val")
    target = min(MIN_VAL_TOKENS, math.ceil(MAX_VAL_SHARE * sum(tokens)))
    if "train" not in order:
        order[-1] = "train"
    i = len(pieces) - 1
    while val < target and not (order[i] == "train" and order.count("train") == 1):
        if order[i] == "train":
            order[i], val = "val", val + tokens[i]
        i -= 1
    return order


def test_cut_document_is_exact_and_prefers_blank_lines(novel):
    pieces = cut_document(novel)
    assert "".join(pieces) == novel
    assert 60 <= len(pieces) <= 2 * len(novel) // PIECE_CHARS
    assert all(PIECE_CHARS <= len(p) < 3 * PIECE_CHARS for p in pieces)
    assert all(p.endswith("\n\n") and not p.endswith("\n\n\n") for p in pieces[:-1])  # cut after a blank line
    assert cut_document(novel) == pieces  # deterministic
    short = novel[:MAX_DOCUMENT_CHARS]
    assert cut_document(short) == [short]  # documents up to the limit stay whole


def test_cut_falls_back_to_line_breaks_then_spaces_then_a_hard_cut():
    verse = "".join(f"line {i} of a poem without stanzas\n" for i in range(4000))
    pieces = cut_document(verse)
    assert "".join(pieces) == verse and len(pieces) > 5
    assert all(p.endswith("\n") and len(p) <= 2 * PIECE_CHARS for p in pieces[:-1])
    one_line = " ".join(f"w{i}" for i in range(30000))
    pieces = cut_document(one_line)
    assert "".join(pieces) == one_line and all(p.endswith(" ") for p in pieces[:-1])
    blob = "x" * (MAX_DOCUMENT_CHARS + 5 * PIECE_CHARS + 7)
    pieces = cut_document(blob)
    assert "".join(pieces) == blob and [len(p) for p in pieces[:-1]] == [2 * PIECE_CHARS] * (len(pieces) - 1)
    assert PIECE_CHARS <= len(pieces[-1]) < 3 * PIECE_CHARS


@pytest.mark.parametrize("val_fraction", [0.005, 0.05])
def test_one_novel_file_gives_both_splits_and_loses_nothing(tmp_path, novel, novel_tokenizer, val_fraction):
    (tmp_path / "novel.txt").write_text(novel, encoding="utf-8")
    out = prepare_dataset([str(tmp_path / "novel.txt")], tmp_path / "ds", tokenizer_dir=novel_tokenizer.directory,
                          val_fraction=val_fraction, workers=1, progress=False)
    m = load_manifest(out)
    train, val = split_texts(out, novel_tokenizer, "train"), split_texts(out, novel_tokenizer, "val")
    assert train and val
    order = interleave_back(novel, train, val)
    assert order.count("val") == m["documents"]["val"] and len(order) == m["documents"]["total"]
    assert m["pieces"]["documents_cut"] == 1 and m["pieces"]["pieces"] == len(order) == len(cut_document(novel))
    assert (m["pieces"]["max_document_chars"], m["pieces"]["piece_chars"]) == (MAX_DOCUMENT_CHARS, PIECE_CHARS)
    assert m["source_bytes"]["total"] == len(novel.encode())
    # Every piece is where its hash puts it, except a run of last pieces when the val split needed topping up.
    assert order == expected_order(cut_document(novel), novel_tokenizer, val_fraction)
    assert m["tokens"]["val"] >= min(MIN_VAL_TOKENS, MAX_VAL_SHARE * m["tokens"]["total"])
    share = m["source_bytes"]["val"] / m["source_bytes"]["total"]
    if val_fraction < MAX_VAL_SHARE / 2:  # 0.5% of this novel is far below MIN_VAL_TOKENS: topped up
        moved = m["split_fallback"]
        assert moved["split"] == "val" and moved["documents"] >= 1 and order[-moved["documents"]:] == ["val"] * \
            moved["documents"]
        assert m["tokens"]["val"] - moved["tokens"] < MIN_VAL_TOKENS <= m["tokens"]["val"]
        assert share < 2 * MAX_VAL_SHARE
    else:
        assert 0.2 * val_fraction < share < 5 * val_fraction


def test_pieces_are_reproducible_across_runs_and_worker_counts(tmp_path, novel, novel_tokenizer, monkeypatch):
    monkeypatch.setattr(data.prepare_data, "BATCH_CHARS", 30_000)  # a few pieces per work item: many items
    (tmp_path / "novel.txt").write_text(novel, encoding="utf-8")
    (tmp_path / "short.txt").write_text("a short second document\n", encoding="utf-8")
    sources = [str(tmp_path / "novel.txt"), str(tmp_path / "short.txt")]
    runs = {}
    for name, workers in (("a", 1), ("b", 3), ("c", 1)):
        out = prepare_dataset(sources, tmp_path / name, tokenizer_dir=novel_tokenizer.directory, val_fraction=0.05,
                              workers=workers, shard_tokens=50_000, progress=False)
        m = load_manifest(out)
        runs[name] = (m["shards"], [(out / s["file"]).read_bytes() for s in m["shards"]], m["pieces"])
    assert len(runs["a"][0]) > 4  # several shards per split
    assert runs["a"] == runs["b"] == runs["c"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_of_last_pieces_tops_up_a_small_val_split(tmp_path, novel, novel_tokenizer, capsys, monkeypatch,
                                                        workers):
    monkeypatch.setattr(data.prepare_data, "BATCH_CHARS", 20_000)  # the held-back pieces span many work items
    (tmp_path / "novel.txt").write_text(novel, encoding="utf-8")
    out = prepare_dataset([str(tmp_path / "novel.txt")], tmp_path / "ds", tokenizer_dir=novel_tokenizer.directory,
                          val_fraction=1e-12, workers=workers, progress=True)  # the hash puts nothing in val
    m = load_manifest(out)
    pieces = cut_document(novel)
    n = m["split_fallback"]["documents"]
    assert m["split_fallback"] == {"split": "val", "documents": n, "tokens": m["tokens"]["val"]} and n > 1
    assert f"the val split was small: the last {n} document(s) ({m['tokens']['val']:,} tokens) went to it" in \
        capsys.readouterr().out
    assert split_texts(out, novel_tokenizer, "val") == pieces[-n:]
    assert split_texts(out, novel_tokenizer, "train") == pieces[:-n]
    # The shortest such run: one piece fewer would not reach MIN_VAL_TOKENS (this novel's 5% is more than that).
    assert MAX_VAL_SHARE * m["tokens"]["total"] > MIN_VAL_TOKENS
    assert m["tokens"]["val"] - (len(novel_tokenizer.encode(pieces[-n])) + 1) < MIN_VAL_TOKENS <= m["tokens"]["val"]
    assert m["bytes_per_token"]["val"] == m["source_bytes"]["val"] / m["tokens"]["val"]


def test_the_last_piece_fills_an_empty_train_split(tmp_path, novel, novel_tokenizer, capsys, monkeypatch):
    monkeypatch.setattr(data.prepare_data, "BATCH_CHARS", 20_000)
    text = novel[:200_000]
    (tmp_path / "novel.txt").write_text(text, encoding="utf-8")
    out = prepare_dataset([str(tmp_path / "novel.txt")], tmp_path / "ds", tokenizer_dir=novel_tokenizer.directory,
                          val_fraction=1 - 1e-12, workers=1, progress=True)
    assert "the train split would have been empty: the last document went to it" in capsys.readouterr().out
    m = load_manifest(out)
    pieces = cut_document(text)
    assert m["split_fallback"] == {"split": "train", "documents": 1, "tokens": m["tokens"]["train"]}
    assert split_texts(out, novel_tokenizer, "train") == [pieces[-1]]
    assert split_texts(out, novel_tokenizer, "val") == pieces[:-1]


def test_the_top_up_never_takes_the_only_train_document(tmp_path, novel_tokenizer):
    (tmp_path / "a.txt").write_text("the first small document\n")
    (tmp_path / "b.txt").write_text("and a second one\n")
    out = prepare_dataset([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "ds",
                          tokenizer_dir=novel_tokenizer.directory, val_fraction=1e-12, workers=1, progress=False)
    m = load_manifest(out)
    assert m["documents"] == {"train": 1, "val": 1, "total": 2} and m["split_fallback"]["documents"] == 1
    assert split_texts(out, novel_tokenizer, "val") == ["and a second one\n"]


def test_no_fallback_without_validation_or_with_a_single_document(tmp_path, novel_tokenizer):
    (tmp_path / "a.txt").write_text("just one small document\n")
    (tmp_path / "b.txt").write_text("and another one\n")
    none = prepare_dataset([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "none",
                           tokenizer_dir=novel_tokenizer.directory, val_fraction=0.0, workers=1, progress=False)
    assert load_manifest(none)["documents"] == {"train": 2, "val": 0, "total": 2}
    assert load_manifest(none)["split_fallback"] is None
    single = prepare_dataset([str(tmp_path / "a.txt")], tmp_path / "single", tokenizer_dir=novel_tokenizer.directory,
                             val_fraction=0.5, workers=1, progress=False)
    assert load_manifest(single)["split_fallback"] is None and load_manifest(single)["documents"]["total"] == 1
