"""Shared fixtures: a small generated corpus and a real SentencePiece tokenizer trained on it once per session."""

from __future__ import annotations

import random

import pytest

from Tokenizer import Tokenizer, train_tokenizer

_PROSE = (
    "the of and to in is that for it with as was on be by this are from at or an but not which have one all "
    "model token layer train loss step batch data value index return print self list dict None True False"
)
_WORDS = _PROSE.split(" ")
_UNICODE = ["naïve", "café", "Ωμέγα", "привет", "数据", "模型", "東京", "😀", "🚀", "→", "€", "ß", "\u00a0"]
_CODE = [
    "def f(x):\n    return x + 1\n",
    "for i in range(10):\n\tprint(i)\n",
    "class A:\n    def __init__(self):\n        self.x = 0\n",
    "if a == b:\n        pass\nelse:\n    a = [1, 2, 3]\n",
]


def make_tiny_corpus(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Deterministic documents (~250 KB in all) mixing prose, indented code, numbers and non-ASCII text."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(4, 30)):
            r = rng.random()
            if r < 0.55:
                sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
                parts.append(sentence.capitalize() + rng.choice([". ", ".\n", ", ", "\n\n", "  "]))
            elif r < 0.75:
                parts.append(rng.choice(_CODE))
            elif r < 0.9:
                parts.append(f"{rng.randint(0, 10**6)} {rng.random():.4f} ")
            else:
                parts.append(" ".join(rng.choice(_UNICODE) for _ in range(3)) + " ")
        docs.append("".join(parts))
    return docs


@pytest.fixture(scope="session")
def tiny_corpus_texts() -> list[str]:
    """The documents tiny_tokenizer was trained on."""
    return make_tiny_corpus()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_corpus_texts) -> Tokenizer:
    """A 512-id byte-fallback BPE tokenizer trained on tiny_corpus_texts (well under a second)."""
    out = tmp_path_factory.mktemp("tiny_tokenizer") / "tokenizer"
    return train_tokenizer(tiny_corpus_texts, 512, out, progress=False)
