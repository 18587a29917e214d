"""Our KV-cached greedy generation equals transformers' generate() on the exported Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference import Generator, encode_chat
from scripts.convert_hf import export_checkpoint
from tests.inference.conftest import CONVERSATIONS, DOCS

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



def test_exported_chat_model_replies_like_generator_chat(chat_ckpt: Path, tmp_path: Path) -> None:
    # scripts/convert_hf.py export carries the chat template and markers: transformers renders the same prompt
    # and, with generation_config's end-of-turn, stops where Generator.chat stops.
    out = export_checkpoint(chat_ckpt, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    gen = Generator.from_checkpoint(chat_ckpt, device="cpu")
    assert hf_model.generation_config.eos_token_id == [gen.tokenizer.eos_id, gen.tokenizer.end_of_turn_id]
    for conversation, turns in ((CONVERSATIONS[0], 3), (CONVERSATIONS[2], 2)):
        messages = conversation[:turns]
        prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        assert prompt == encode_chat(gen.tokenizer, messages)
        text = "".join(gen.chat(messages, max_new_tokens=NEW_TOKENS))
        assert text == conversation[turns]["content"]
        new = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                pad_token_id=gen.tokenizer.pad_id)[0, len(prompt) :].tolist()
        assert new == [*gen.last[0].token_ids, gen.tokenizer.end_of_turn_id]
        assert hf_tok.decode(new[:-1]) == text
