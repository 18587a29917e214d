"""Importing current Llama-family checkpoints, tokenizer included: tiny random models built here in the configuration
style of Llama-3.2-1B (llama3 RoPE scaling, explicit head_dim, tied head, byte-level BPE that adds BOS),
SmolLM2-135M (GPT-2 style byte-level BPE without BOS, tied) and TinyLlama (SentencePiece, untied, GQA).

Each is compared with transformers after import: logits (fp32, within 1e-4, at positions well past the llama3
scaling threshold), token ids of AutoTokenizer, greedy generation; then exported back and compared with the
original files field by field and tensor by tensor.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from inference import Generator, SamplingParams  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from scripts import convert_hf  # noqa: E402
from scripts.convert_hf import export_checkpoint, import_checkpoint  # noqa: E402
from tests.conftest import make_tiny_corpus  # noqa: E402
from tests.helpers import randomize  # noqa: E402
from Tokenizer import load_tokenizer  # noqa: E402
from Tokenizer.hf_tokenizer import HFTokenizer  # noqa: E402

hf_logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parents[2]

TOL = 1e-4
SAMPLES = [
    "Hello world",
    "  two  spaces, and trailing  ",
    "line one\nline two\n\n\nend",
    "\ttab\tseparated\tvalues\t",
    "digits 1234567890 and 3.14159, -42",
    "emoji 😀🚀 and ✓ ok",
    "CJK 数据 模型 東京 текст",
    "naïve café — Ωμέγα ß\u00a0nbsp",
    "def f(x):\n    return x + 1\n",
    " leading space",
    "",
]
LLAMA3_PATTERN = (  # Llama 3's pre-tokenizer split (contractions, letters, 1-3 digits, punctuation, spaces)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


# ---- tokenizers, built here --------------------------------------------------------------------------------------


def byte_level_bpe(texts: list[str], specials: list[str], llama3: bool) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on `texts`: Llama 3's regex split and BOS template, or GPT-2's plain byte level."""
    tok = tokenizers.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"), byte_level])
                         if llama3 else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    if llama3:
        bos = specials[0]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def sentencepiece_model(texts: list[str]) -> bytes:
    """A Llama 2 / TinyLlama style SentencePiece BPE: byte fallback, split digits, dummy prefix, no pad."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=500, model_type="bpe", byte_fallback=True,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    return buf.getvalue()


def save_tokenizer(style: str, hf_dir: Path, texts: list[str]) -> None:
    """Write the tokenizer files of `style` into hf_dir the way the Hugging Face repositories ship them."""
    if style == "tinyllama":
        sp_dir = hf_dir.parent / "sp"
        sp_dir.mkdir()
        (sp_dir / "tokenizer.model").write_bytes(sentencepiece_model(texts))
        (sp_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        }))
        AutoTokenizer.from_pretrained(sp_dir).save_pretrained(hf_dir)  # transformers' own conversion
        shutil.copy2(sp_dir / "tokenizer.model", hf_dir / "tokenizer.model")  # shipped too, as TinyLlama does
        return
    if style == "llama32":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
        names = {"bos_token": specials[0], "eos_token": specials[1]}
    else:  # smollm2: one <|endoftext|> for bos, eos and unk, chat markers as extra specials
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        names = {"bos_token": specials[0], "eos_token": specials[0], "unk_token": specials[0]}
    tok = byte_level_bpe(texts, specials, llama3=style == "llama32")
    PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **names).save_pretrained(hf_dir)


# ---- models, built here ------------------------------------------------------------------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@dataclass
class Style:
    name: str
    config: dict  # LlamaConfig arguments beyond the shared ones
    seq_len: int  # tokens compared; > original_max_position_embeddings where RoPE is scaled


STYLES = {
    # Llama-3.2-1B: head_dim 64 with hidden 2048 / 32 heads; here head_dim 32 != 64 / 4, so it must be read.
    "llama32": Style("llama32", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                     tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE,
                                     max_position_embeddings=256, bos_token_id=0, eos_token_id=[1, 2]), 160),
    # SmolLM2-135M: 9 heads, 3 kv heads (GQA 3:1), tied, theta 1e5.
    "smollm2": Style("smollm2", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                     tie_word_embeddings=True,
                                     rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                     max_position_embeddings=128, bos_token_id=0, eos_token_id=0), 96),
    # TinyLlama-1.1B: 32 heads, 4 kv heads (GQA 8:1), untied, theta 1e4.
    "tinyllama": Style("tinyllama", dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=1,
                                         tie_word_embeddings=False,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2), 96),
}


def build_hf_dir(root: Path, style: Style, seed: int = 0) -> tuple[Path, LlamaForCausalLM]:
    """A Hugging Face directory (weights, config, tokenizer) for `style`, and the transformers model in it."""
    hf_dir = root / "hf"
    save_tokenizer(style.name, hf_dir, make_tiny_corpus(n_docs=150))
    vocab = len(AutoTokenizer.from_pretrained(hf_dir))
    cfg = LlamaConfig(vocab_size=vocab, intermediate_size=96, num_hidden_layers=2, rms_norm_eps=1e-5,
                      attn_implementation="eager", **style.config)
    model = LlamaForCausalLM(cfg)
    randomize(model, seed)
    model.eval().save_pretrained(hf_dir)
    return hf_dir, model


@pytest.fixture(scope="module", params=list(STYLES))
def imported(request, tmp_path_factory) -> tuple[Style, Path, LlamaForCausalLM, Path]:
    """(style, HF directory, transformers model, our imported checkpoint directory) per style."""
    style = STYLES[request.param]
    root = tmp_path_factory.mktemp(style.name)
    hf_dir, hf_model = build_hf_dir(root, style)
    out = import_checkpoint(hf_dir, root / "ours")
    return style, hf_dir, hf_model, out


def random_tokens(vocab: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(1))


# ---- parity ------------------------------------------------------------------------------------------------------


def test_logits_match_transformers(imported):
    style, _, hf_model, out = imported
    ours, _ = load_model(out)
    cfg = ours.cfg
    toks = random_tokens(cfg.vocab_size, style.seq_len)
    with torch.no_grad():
        expected, got = hf_model(input_ids=toks).logits, ours(toks)
    assert expected.std() > 0.5  # logits far from zero, so the tolerance is meaningful
    assert (got - expected).abs().max() <= TOL
    if style.name == "llama32":
        assert cfg.rope_scaling.type == "llama3" and cfg.head_dim == 32
        assert style.seq_len > 2 * cfg.rope_scaling.original_max_seq_len
        tail = slice(cfg.rope_scaling.original_max_seq_len, None)  # past the pretraining context
        assert (got[:, tail] - expected[:, tail]).abs().max() <= TOL


def test_llama3_parity_needs_the_rope_scaling(tmp_path, monkeypatch):
    """Control: dropping the llama3 scaling on import (plain RoPE, same theta) must break parity."""
    hf_dir, hf_model = build_hf_dir(tmp_path, STYLES["llama32"])
    plain = convert_hf._rope
    monkeypatch.setattr(convert_hf, "_rope", lambda hf: (plain(hf)[0], convert_hf.RopeScaling()))
    import_checkpoint(hf_dir, tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    toks = random_tokens(ours.cfg.vocab_size, 160)
    with torch.no_grad():
        assert (ours(toks) - hf_model(input_ids=toks).logits).abs().max() > 1e-2


def test_tokenizer_ids_match_autotokenizer(imported):
    style, hf_dir, _, out = imported
    ours = load_tokenizer(out / "tokenizer")
    theirs = AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(ours, HFTokenizer)
    assert ours.vocab_size == len(theirs)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.add_bos == (style.name != "smollm2")  # Llama 3 and TinyLlama start with BOS, SmolLM2 does not
    for text in SAMPLES:
        ids = ours.encode(text, bos=ours.add_bos)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    assert ours.encode("a b", eos=True)[-1] == ours.eos_id


def test_greedy_generation_matches_transformers(imported):
    _, hf_dir, hf_model, out = imported
    gen = Generator.from_checkpoint(out, device="cpu", dtype="fp32")
    prompt = "def f(x):\n    return x"
    ids = gen.encode(prompt)  # BOS first exactly when the tokenizer's model expects it
    assert ids == AutoTokenizer.from_pretrained(hf_dir)(prompt)["input_ids"]
    done = gen.generate(prompt, max_new_tokens=12, sampling=SamplingParams(temperature=0.0))[0]
    eos = gen.tokenizer.eos_id
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                     pad_token_id=eos)[0, len(ids):].tolist()
    if expected[-1] == eos:  # transformers keeps the EOS it stopped at; our completions leave it out
        expected = expected[:-1]
        assert done.finish_reason == "eos"
    assert done.token_ids == expected
    assert done.text == gen.tokenizer.decode(expected)


@pytest.mark.parametrize("imported", ["llama32"], indirect=True)
def test_run_inference_on_an_imported_model(imported):
    """The command line, as users run it, continues a prompt exactly as transformers does (greedy, BOS added)."""
    _, hf_dir, hf_model, out = imported
    prompt = "Hello world"
    result = subprocess.run(
        [sys.executable, "run_inference.py", "--checkpoint", str(out), "--prompt", prompt, "--temperature", "0",
         "--max-new-tokens", "6", "--device", "cpu", "--dtype", "fp32"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    ids = AutoTokenizer.from_pretrained(hf_dir)(prompt)["input_ids"]
    tokenizer = load_tokenizer(out / "tokenizer")
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_id,
                                     pad_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
    if expected[-1] == tokenizer.eos_id:
        expected = expected[:-1]
    assert result.stdout == tokenizer.decode(expected) + "\n"


# ---- export after import -----------------------------------------------------------------------------------------

CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "model_type")


def test_export_after_import_reproduces_the_original(imported, tmp_path):
    _, hf_dir, _, out = imported
    export_checkpoint(out, tmp_path / "back")
    original = json.loads((hf_dir / "config.json").read_text())
    back = json.loads((tmp_path / "back/config.json").read_text())
    assert {k: back.get(k) for k in CONFIG_KEYS} == {k: original.get(k) for k in CONFIG_KEYS}
    assert back["rope_parameters"] == original["rope_parameters"]
    assert AutoConfig.from_pretrained(tmp_path / "back").rope_parameters == \
        AutoConfig.from_pretrained(hf_dir).rope_parameters
    before, after = load_file(str(hf_dir / "model.safetensors")), load_file(str(tmp_path / "back/model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        if (hf_dir / name).is_file():
            assert (tmp_path / "back" / name).read_bytes() == (hf_dir / name).read_bytes(), name


# ---- a SentencePiece tokenizer.model without tokenizer.json --------------------------------------------------


def test_lone_sentencepiece_model_is_converted_like_transformers(tmp_path):
    hf_dir, _ = build_hf_dir(tmp_path, STYLES["tinyllama"])
    (hf_dir / "tokenizer.json").unlink()  # as in older Llama 2 style repositories
    shutil.copy2(tmp_path / "sp/tokenizer_config.json", hf_dir / "tokenizer_config.json")
    out = import_checkpoint(hf_dir, tmp_path / "ours")
    ours, theirs = load_tokenizer(out / "tokenizer"), AutoTokenizer.from_pretrained(hf_dir)
    assert (out / "tokenizer/tokenizer.model").is_file() and ours.add_bos
    for text in SAMPLES:
        assert ours.encode(text, bos=ours.add_bos) == theirs(text)["input_ids"], text
