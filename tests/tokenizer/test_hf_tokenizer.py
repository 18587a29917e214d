"""HFTokenizer (a Hugging Face tokenizer.json) and load_tokenizer's choice between it and our SentencePiece model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import DataError
from Tokenizer import TextTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import models, pre_tokenizers, processors  # noqa: E402

from Tokenizer.hf_tokenizer import HFTokenizer  # noqa: E402

WORDS = ["<unk>", "<s>", "</s>", "hello", "world", "again"]


def word_level(directory: Path, config: dict | None = None, bos_template: bool = False) -> Path:
    """A word-level tokenizer.json (ids = positions in WORDS) and its tokenizer_config.json."""
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": "<unk>"} if config is None else config
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_encode_decode_and_special_ids(tmp_path):
    tok = load_tokenizer(word_level(tmp_path / "t"))
    assert isinstance(tok, HFTokenizer) and isinstance(tok, TextTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 6)  # no pad_token: pad is EOS
    assert tok.encode("hello world") == [3, 4]
    assert tok.encode("hello world", bos=True, eos=True) == [1, 3, 4, 2]
    assert tok.encode_batch(["hello", "again world"], eos=True) == [[3, 2], [5, 4, 2]]
    assert tok.decode([1, 3, 4, 2]) == "hello world"  # special tokens decode to nothing
    assert (tok.token_to_id("again"), tok.token_to_id("absent"), tok.id_to_token(4)) == (5, None, "world")
    assert not tok.add_bos


def test_add_bos_from_post_processor_or_config(tmp_path):
    assert load_tokenizer(word_level(tmp_path / "a", bos_template=True)).add_bos
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}
    assert not load_tokenizer(word_level(tmp_path / "b", config, bos_template=True)).add_bos
    config = {**config, "add_bos_token": True}
    assert load_tokenizer(word_level(tmp_path / "c", config)).add_bos


def test_content_hash_covers_the_config(tmp_path):
    a = load_tokenizer(word_level(tmp_path / "a")).content_hash
    assert load_tokenizer(word_level(tmp_path / "b")).content_hash == a
    assert load_tokenizer(word_level(tmp_path / "c", {"bos_token": "<s>", "eos_token": "<s>"})).content_hash != a


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"bos_token": "<s>"}, "names no eos_token"),
        ({"eos_token": "<eos>"}, "eos_token '<eos>' is not in tokenizer.json"),
    ],
    ids=["no-eos", "unknown-eos"],
)
def test_bad_special_tokens_are_data_errors(tmp_path, config, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(word_level(tmp_path / "t", config))


def test_unreadable_tokenizer_json_is_a_data_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read tokenizer .*tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_chooses_by_the_files_present(tmp_path, tiny_tokenizer):
    ours = load_tokenizer(tiny_tokenizer.directory)
    assert type(ours) is Tokenizer and isinstance(ours, TextTokenizer)
    assert not ours.add_bos and ours.token_to_id(ours.id_to_token(300)) == 300
    assert ours.token_to_id("no such piece") is None and ours.token_to_id("<unk>") == 0
    with pytest.raises(DataError, match=r"no tokenizer in .*empty: it has neither tokenizer\.model nor"):
        load_tokenizer(tmp_path / "empty")
