"""train_tokenizer: bounded sampling, long documents, clear errors, atomic output, the command line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, DataError
from Tokenizer import Tokenizer, train_tokenizer
from Tokenizer.train_tokenizer import MAX_SENTENCE_BYTES, META_FILE, sample_texts, split_document

REPO_ROOT = Path(__file__).resolve().parents[2]


class CountingTexts:
    """An endless stream of documents that counts how many were requested."""

    def __init__(self, docs: list[str]):
        self.docs, self.taken = docs, 0

    def __iter__(self):
        for doc in itertools.cycle(self.docs):
            self.taken += 1
            yield doc


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab \n😀数é"), max_size=300), max_bytes=st.integers(4, 64))
def test_split_document_keeps_every_character_within_the_bound(text, max_bytes):
    pieces = list(split_document(text, max_bytes))
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= max_bytes for p in pieces)


def test_sampling_stops_reading_at_the_budget():
    stream = CountingTexts(["x" * 999 + "\n"])
    sentences, n_bytes = sample_texts(stream, max_bytes=10_500, progress=False)
    assert n_bytes == 10_500 == sum(len(s.encode()) for s in sentences)  # the last document is cut
    assert stream.taken == 11  # and nothing after it was requested


def test_train_tokenizer_reads_only_sample_mb_of_an_endless_stream(tmp_path, tiny_corpus_texts):
    stream = CountingTexts(tiny_corpus_texts)
    tokenizer = train_tokenizer(stream, 512, tmp_path / "tok", sample_mb=0.1, progress=False)
    meta = json.loads((tokenizer.directory / META_FILE).read_text())
    assert meta["sample_bytes"] == 100_000
    mean_doc_bytes = sum(len(d.encode()) for d in tiny_corpus_texts) / len(tiny_corpus_texts)
    assert stream.taken <= 100_000 / mean_doc_bytes * 1.5


def test_documents_longer_than_a_sentencepiece_sentence_are_split_not_dropped(tmp_path, tiny_corpus_texts):
    # One 100 KB line: SentencePiece alone would skip it as too long and have nothing to train on.
    doc = " ".join(tiny_corpus_texts[:200]).replace("\n", " ")
    assert len(doc.encode()) > 4 * MAX_SENTENCE_BYTES
    tokenizer = train_tokenizer([doc], 512, tmp_path / "tok", progress=False)
    assert json.loads((tokenizer.directory / META_FILE).read_text())["sample_bytes"] == len(doc.encode())
    assert len(tokenizer.encode(" the")) == 1


def test_vocab_too_small_for_byte_fallback_is_a_config_error(tmp_path, tiny_corpus_texts):
    with pytest.raises(ConfigError, match=r"vocab_size 300 is too small.*at least 328"):
        train_tokenizer(tiny_corpus_texts, 300, tmp_path / "tok", progress=False)
    assert not (tmp_path / "tok").exists()


def test_vocab_too_large_for_the_text_is_a_clear_data_error(tmp_path):
    with pytest.raises(DataError, match=r"cannot train a 5000-token tokenizer.*Vocabulary size too high") as info:
        train_tokenizer(["tiny text, tiny vocabulary"], 5000, tmp_path / "tok", progress=False)
    assert "src/" not in str(info.value)  # SentencePiece's C++ location is dropped from the message


def test_no_text_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(iter([]), 512, tmp_path / "tok", progress=False)


def test_retraining_replaces_the_tokenizer_atomically(tmp_path, tiny_corpus_texts):
    first = train_tokenizer(tiny_corpus_texts[:300], 512, tmp_path / "tok", progress=False)
    second = train_tokenizer(tiny_corpus_texts, 512, tmp_path / "tok", progress=False)
    assert first.content_hash != second.content_hash
    assert Tokenizer.load(tmp_path / "tok").content_hash == second.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary or old directories left


def test_refuses_to_replace_a_directory_that_is_not_a_tokenizer(tmp_path, tiny_corpus_texts):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match=r"manifest\.json"):
        train_tokenizer(tiny_corpus_texts, 512, tmp_path / "dataset", progress=False)
    assert (tmp_path / "dataset" / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "Tokenizer/train_tokenizer.py", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_trains_from_text_files(tmp_path, tiny_corpus_texts):
    (tmp_path / "corpus").mkdir()
    for i, doc in enumerate(tiny_corpus_texts[:200]):
        (tmp_path / "corpus" / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    # The output lies beside the input, never inside it (tools never write into what they read).
    result = run_cli("--input", str(tmp_path / "corpus"), "--vocab-size", "400", "--out", str(tmp_path / "tok"),
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert Tokenizer.load(tmp_path / "tok").vocab_size == 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/missing.txt", "--vocab-size", "512"], "{tmp}/missing.txt"),
        (["--input", "{tmp}/corpus.txt", "--vocab-size", "100"], "--vocab-size must be at least"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "corpus.txt").write_text("some text\n" * 100)
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_cli(*args, "--out", str(tmp_path / "tok"), "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "tok").exists()
