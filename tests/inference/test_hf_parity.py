"""Our KV-cached greedy generation equals transformers' generate() on the exported Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM

from inference import Generator
from scripts.convert_hf import export_checkpoint
from tests.inference.conftest import DOCS

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def hf_model(random_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    out = export_checkpoint(random_ckpt, tmp_path_factory.mktemp("hf") / "export")
    return AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()


def hf_greedy(hf_model, ids: list[list[int]], pad_id: int) -> list[list[int]]:
    """transformers greedy decoding of left-padded prompts, exactly NEW_TOKENS new tokens each (no stop token:
    min_new_tokens would instead forbid EOS, which our generate_ids() lets the model pick like any token)."""
    T = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (T - len(x)) + x for x in ids])
    attention_mask = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in ids])
    out = hf_model.generate(
        input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=NEW_TOKENS,
        eos_token_id=None, pad_token_id=pad_id,
    )
    return out[:, T:].tolist()


def test_greedy_tokens_equal_transformers_generate(random_ckpt: Path, hf_model) -> None:
    gen = Generator.from_checkpoint(random_ckpt, device="cpu")
    prompts = [gen.encode(d) for d in ("Hello", DOCS[1], "def add(a, b):")]
    for ids in prompts:
        assert gen.generate_ids([ids], NEW_TOKENS) == hf_greedy(hf_model, [ids], gen.tokenizer.pad_id)


def test_batched_greedy_equals_transformers_batched_generate(random_ckpt: Path, hf_model) -> None:
    gen = Generator.from_checkpoint(random_ckpt, device="cpu")
    prompts = [gen.encode(d) for d in ("Hello", DOCS[1], "def add(a, b):")]
    assert gen.generate_ids(prompts, NEW_TOKENS) == hf_greedy(hf_model, prompts, gen.tokenizer.pad_id)
