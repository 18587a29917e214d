"""Tokenizer: loading, special ids, content hash, batch encoding."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch

from core.errors import DataError
from tests.tokenizer.strategies import TRICKY
from Tokenizer import Tokenizer, train_tokenizer
from Tokenizer.tokenizer import MODEL_FILE


def test_special_ids_and_sizes(tiny_tokenizer):
    assert (tiny_tokenizer.unk_id, tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id) == (0, 1, 2, 3)
    assert tiny_tokenizer.vocab_size == 512
    assert (tiny_tokenizer.directory / MODEL_FILE).is_file()


def test_bos_and_eos_are_added_on_request_and_decode_to_nothing(tiny_tokenizer):
    plain = tiny_tokenizer.encode("hello world")
    assert tiny_tokenizer.encode("hello world", bos=True, eos=True) == [1, *plain, 2]
    assert tiny_tokenizer.encode("", eos=True) == [2]
    assert tiny_tokenizer.decode([1, *plain, 2, 3]) == "hello world"


def test_specials_are_never_matched_inside_text(tiny_tokenizer):
    ids = tiny_tokenizer.encode("<s></s><pad><unk>")
    assert not set(ids) & {0, 1, 2, 3}


def test_decode_accepts_lists_tuples_arrays_and_tensors(tiny_tokenizer):
    ids = tiny_tokenizer.encode("def f(x):\n    return x")
    text = tiny_tokenizer.decode(ids)
    assert tiny_tokenizer.decode(tuple(ids)) == text
    assert tiny_tokenizer.decode(np.array(ids, dtype=np.int64)) == text
    assert tiny_tokenizer.decode(torch.tensor(ids)) == text


def test_encode_batch_equals_encode(tiny_tokenizer, tiny_corpus_texts):
    long_doc = "".join(tiny_corpus_texts[:20]) + " a\u2581b " + "".join(tiny_corpus_texts[20:30])
    texts = [*tiny_corpus_texts[:50], *TRICKY, "", long_doc]
    for kwargs in ({}, {"bos": True, "eos": True}, {"eos": True, "num_threads": 1}):
        single = {k: v for k, v in kwargs.items() if k != "num_threads"}
        assert tiny_tokenizer.encode_batch(texts, **kwargs) == [tiny_tokenizer.encode(t, **single) for t in texts]
    assert tiny_tokenizer.encode_batch([]) == []


def test_survives_pickling_for_worker_processes(tiny_tokenizer):
    clone = pickle.loads(pickle.dumps(tiny_tokenizer))
    text = "def f(x):\n    return x\u2581 😀"
    assert clone.encode(text) == tiny_tokenizer.encode(text)
    assert (clone.content_hash, clone.directory) == (tiny_tokenizer.content_hash, tiny_tokenizer.directory)


def test_content_hash_is_the_sha256_of_the_model_file(tiny_tokenizer):
    expected = hashlib.sha256((tiny_tokenizer.directory / MODEL_FILE).read_bytes()).hexdigest()
    assert tiny_tokenizer.content_hash == expected
    assert Tokenizer.load(tiny_tokenizer.directory).content_hash == expected


def test_content_hash_survives_a_copy_and_changes_with_the_model(tiny_tokenizer, tiny_corpus_texts, tmp_path):
    shutil.copytree(tiny_tokenizer.directory, tmp_path / "copy")
    assert Tokenizer.load(tmp_path / "copy").content_hash == tiny_tokenizer.content_hash
    other = train_tokenizer(tiny_corpus_texts[:200], 512, tmp_path / "other", progress=False)
    assert other.content_hash != tiny_tokenizer.content_hash


def test_training_is_deterministic(tiny_tokenizer, tiny_corpus_texts, tmp_path):
    again = train_tokenizer(tiny_corpus_texts, 512, tmp_path / "again", progress=False)
    assert again.content_hash == tiny_tokenizer.content_hash


def test_load_missing_directory_names_the_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        Tokenizer.load(tmp_path / "nope")


def test_load_given_the_model_file_says_to_pass_its_directory(tiny_tokenizer):
    with pytest.raises(DataError, match="pass the directory"):
        Tokenizer.load(tiny_tokenizer.directory / MODEL_FILE)


def test_load_unreadable_model_names_the_path(tmp_path):
    (tmp_path / MODEL_FILE).write_bytes(b"not a sentencepiece model")
    with pytest.raises(DataError, match=r"cannot read tokenizer .*tokenizer\.model"):
        Tokenizer.load(tmp_path)


def test_load_rejects_other_special_ids(tmp_path, tiny_corpus_texts):
    # A SentencePiece model with its default ids (no pad) is not ours: refuse it rather than mis-pad.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(tiny_corpus_texts), model_writer=model, vocab_size=512,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    (tmp_path / MODEL_FILE).write_bytes(model.getvalue())
    with pytest.raises(DataError, match="special ids"):
        Tokenizer.load(tmp_path)
