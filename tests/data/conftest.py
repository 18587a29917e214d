"""Fixtures for data tests: a small mixed-format corpus and a tokenizer trained on it once per session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from Tokenizer import Tokenizer, train_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "return", "value", "def", "class", "for", "in", "if", "else", "naïve",
         "café", "日本語", "emoji 🚀", "tab\there", "x = 1", "print(x)", "    indent"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """n distinct documents of a few lines each, with some non-ASCII text and indentation."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(rng.randint(1, 6))]
        docs.append(f"# doc {i}\n" + "\n".join(lines) + "\n")
    return docs


def write_corpus(directory: Path, docs: list[str]) -> Path:
    """Half the documents as .txt files, the other half as lines of one .jsonl file (in that source order)."""
    directory.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for i, doc in enumerate(docs[:half]):
        (directory / f"a_{i:04d}.txt").write_text(doc, encoding="utf-8")
    with open(directory / "b_rest.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[half:]:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n")
    return directory


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    return make_docs(120)


@pytest.fixture(scope="session")
def data_tokenizer(tmp_path_factory, corpus_docs) -> Tokenizer:
    """A 400-id tokenizer trained on the test corpus."""
    out = tmp_path_factory.mktemp("data_tok") / "tokenizer"
    return train_tokenizer(iter(corpus_docs), 400, out, progress=False)


@pytest.fixture(name="write_corpus")
def write_corpus_fixture():
    """The write_corpus helper, for tests that lay out their own corpus."""
    return write_corpus


@pytest.fixture
def corpus_dir(tmp_path, corpus_docs) -> Path:
    return write_corpus(tmp_path / "corpus", corpus_docs)
