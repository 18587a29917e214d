"""Fine-tuning an imported model end to end: its own tokenizer (70,000 ids, so the shards hold uint32 tokens)
prepares the data through data.tokenizer_dir, training starts from its weights with train.init_from, and the
result generates through run_inference's Generator with the same tokenizer."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import models, pre_tokenizers, processors  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from data.dataset import TokenDataset  # noqa: E402
from data.shards import read_header  # noqa: E402
from inference import Generator  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from scripts.convert_hf import import_checkpoint  # noqa: E402
from Tokenizer import load_tokenizer  # noqa: E402
from train.config import config_from_dict  # noqa: E402
from train.trainer import Trainer  # noqa: E402

VOCAB = 70_000  # over 65,536: ids need 32 bits


def big_vocab_hf_dir(root):
    """A Hugging Face directory: a word-level tokenizer with VOCAB ids that adds BOS, and a tiny random Llama."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf_dir = root / "hf"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(hf_dir)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    return hf_dir


def corpus(root):
    """Documents of words drawn from the whole id range, most of them above 65,535."""
    rng = random.Random(0)
    (root / "corpus").mkdir()
    for d in range(40):
        words = " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(rng.randint(20, 60)))
        (root / "corpus" / f"doc_{d:03d}.txt").write_text(words)
    return root / "corpus"


@pytest.mark.slow
def test_finetune_imported_model_with_its_tokenizer_and_uint32_shards(tmp_path):
    ckpt = import_checkpoint(big_vocab_hf_dir(tmp_path), tmp_path / "imported")
    tokenizer = load_tokenizer(ckpt / "tokenizer")
    assert tokenizer.vocab_size == VOCAB and tokenizer.add_bos
    imported, _ = load_model(ckpt)
    cfg = config_from_dict({
        "model": dataclasses.asdict(imported.cfg),
        "data": {"sources": [str(corpus(tmp_path))], "dataset_dir": str(tmp_path / "dataset"),
                 "tokenizer_dir": str(ckpt / "tokenizer"), "val_fraction": 0.2, "workers": 2},
        "train": {"out_dir": str(tmp_path / "run"), "init_from": str(ckpt), "batch_size": 4, "micro_batch_size": 4,
                  "seq_len": 32, "max_steps": 3, "eval_interval": 3, "eval_batches": 1, "save_interval": 3,
                  "log_interval": 1, "sample_tokens": 0, "device": "cpu", "seed": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "log": {"tensorboard": False, "progress": False},
    })
    cfg.validate()
    trainer = Trainer(cfg)
    for name, p in imported.state_dict().items():
        assert torch.equal(trainer.engine.raw_model.state_dict()[name], p), name

    manifest = json.loads((tmp_path / "dataset/manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["hash"] == tokenizer.content_hash
    assert read_header(tmp_path / "dataset" / manifest["shards"][0]["file"])[0] == np.dtype("<u4")
    dataset = TokenDataset(tmp_path / "dataset")
    train_ids = dataset.read("train", 0, dataset.num_tokens("train"))
    assert train_ids.max() >= 2**16 and train_ids[0] == tokenizer.bos_id  # BOS first, as the model expects
    # Every document is BOS + its words + EOS, ids intact above 65,535.
    docs = {tuple(tokenizer.encode(p.read_text(), bos=True, eos=True)) for p in (tmp_path / "corpus").iterdir()}
    ends = np.flatnonzero(train_ids == tokenizer.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert {tuple(train_ids[s : e + 1].tolist()) for s, e in zip(starts, ends, strict=True)} <= docs

    result = trainer.fit()
    assert result.step == 3 and np.isfinite(result.final_val_loss)
    final = load_tokenizer(result.checkpoint / "tokenizer")
    assert final.content_hash == tokenizer.content_hash
    gen = Generator.from_checkpoint(tmp_path / "run", device="cpu", dtype="fp32")
    done = gen.generate("w70 w65537", max_new_tokens=4)[0]
    assert done.prompt_tokens == 3  # BOS + two words
