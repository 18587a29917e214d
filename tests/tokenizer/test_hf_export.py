"""The Hugging Face export gives the same ids as Tokenizer.encode() and decodes to the same text."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings

from tests.tokenizer.strategies import TRICKY, any_text
from Tokenizer.hf_export import export_hf_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_tokenizer")
    export_hf_tokenizer(tiny_tokenizer.directory, out)
    return transformers.AutoTokenizer.from_pretrained(out)


def varied_sample(docs: list[str]) -> list[str]:
    """Whole documents, random slices of them (cut anywhere, even mid-word) and the tricky strings."""
    rng = random.Random(0)
    slices = []
    for _ in range(300):
        doc = rng.choice(docs)
        start = rng.randrange(len(doc))
        slices.append(doc[start : start + rng.randint(0, 120)] + rng.choice(TRICKY))
    return [*docs[:100], *slices, *TRICKY, "", "  leading", "trailing  ", "1234567890", "a\u2581b", "</s> <s>"]


def test_same_ids_and_text_on_a_varied_sample(tiny_tokenizer, tiny_corpus_texts, hf_tokenizer):
    texts = varied_sample(tiny_corpus_texts)
    ours = tiny_tokenizer.encode_batch(texts)
    assert hf_tokenizer(texts)["input_ids"] == ours
    assert [hf_tokenizer.decode(ids) for ids in ours] == texts


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_same_ids_on_any_text(tiny_tokenizer, hf_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text


def test_special_tokens_match_and_are_not_added(tiny_tokenizer, hf_tokenizer):
    ids = (hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id)
    assert ids == (tiny_tokenizer.unk_id, tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id)
    assert len(hf_tokenizer) == tiny_tokenizer.vocab_size
    with_specials = tiny_tokenizer.encode("hello", bos=True, eos=True)
    assert hf_tokenizer.decode(with_specials, skip_special_tokens=True) == tiny_tokenizer.decode(with_specials)


def test_a_llama_config_beside_it_does_not_swap_the_tokenizer(tiny_tokenizer, tmp_path):
    # A converted model directory holds config.json (model_type llama); AutoTokenizer must still load our
    # pipeline, not rebuild Llama's (which adds a dummy prefix and BOS).
    export_hf_tokenizer(tiny_tokenizer.directory, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": tiny_tokenizer.vocab_size}))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in [" leading space", "x\u2581y", "def f(x):\n    return 1"]:
        assert hf(text)["input_ids"] == tiny_tokenizer.encode(text)
