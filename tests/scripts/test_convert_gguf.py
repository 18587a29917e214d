"""GGUF export: parity with the real llama.cpp (through llama-cpp-python) on token ids, greedy continuations and
logits; the file's metadata; the documented tokenization limits; refusals and command-line errors."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2

from core.errors import DataError
from inference.generator import Generator
from model import ModelConfig, Transformer
from model.checkpoint import TOKENIZER, load_model, save_model_checkpoint
from scripts import convert_gguf
from scripts.convert_gguf import export_gguf, main
from tests.helpers import randomize
from tests.inference.conftest import memorize
from Tokenizer import Tokenizer
from Tokenizer.gguf_vocab import gguf_vocab
from Tokenizer.tokenizer import MODEL_FILE

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_gguf.py"
MAX_LEN = 256
NEW_TOKENS = 64
F32 = 0  # GGML_TYPE_F32: llama.cpp's KV cache defaults to f16, which would round every key and value
# (max, mean) of |llama.cpp logit - our fp32 logit| allowed per export dtype, on the trained model (logits up to
# ~16). Measured: f32 2.6e-5 / 1.6e-6, f16 0.011 / 0.0011, bf16 0.14 / 0.009, q8_0 0.54 / 0.028 (q8_0 also rounds
# the activations to 8 bits in every matmul). The bounds leave 2-4x room; q/k rows in the Hugging Face layout give
# a max of 14.6.
LOGIT_TOL = {"f32": (1e-4, 1e-5), "f16": (3e-2, 3e-3), "bf16": (0.3, 0.02), "q8_0": (1.0, 0.06)}
TEXTS = [
    "", " ", "a", "  two leading spaces", "trailing spaces   ", "many     inner      spaces", "\n", "\n\n\nx\n",
    "\ttab\tseparated\tvalues\n\t\tindented", "mixed \t \n whitespace \r\n CRLF", "digits 0123456789 and 3.14159",
    "emoji 😀🚀🦊 and ZWJ 👩‍💻", "CJK 数据模型 東京 你好世界", "naïve café Ωμέγα привет ß €",
    "<s>", "</s>", "<s>hello</s>", "<unk> <pad>", "<0x41>", "[PAD3]", "<|im_start|>user",
    "def f(x):\n    return x + 1\n", "combining e\u0301 and nbsp\u00a0here", "\u200b zero width", "\x00 nul",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the models are tiny and the CI machine has 2 busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(vocab_size: int, **overrides) -> ModelConfig:
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, multiple_of=32,
                  max_seq_len=MAX_LEN)
    return ModelConfig(**{**fields, **overrides})


def memorized_docs(tokenizer: Tokenizer, corpus: list[str]) -> list[list[int]]:
    """The first 96 tokens of three corpus documents (prose, code, numbers, emoji and CJK bytes)."""
    return [tokenizer.encode(text)[:96] for text in corpus[1:4]]


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, tiny_tokenizer: Tokenizer, tiny_corpus_texts: list[str]) -> Path:
    """A GQA model trained for 60 steps on a tiny corpus (three documents): its greedy continuations are long
    varied texts, decided by real logit margins rather than one repeated token."""
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_tokenizer.vocab_size)
    model = Transformer(cfg)
    memorize(model, memorized_docs(tiny_tokenizer, tiny_corpus_texts), steps=60)
    return save_model_checkpoint(tmp_path_factory.mktemp("gguf_trained") / "ckpt", model, tiny_tokenizer.directory)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory, tiny_tokenizer: Tokenizer) -> Path:
    """An untrained model with the test tokenizer: enough for tokenization, metadata and command-line tests."""
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_tokenizer.vocab_size)
    return save_model_checkpoint(tmp_path_factory.mktemp("gguf_random") / "ckpt", Transformer(cfg),
                                 tiny_tokenizer.directory)


@pytest.fixture(scope="module")
def vocab_gguf(random_ckpt: Path, tmp_path_factory) -> Path:
    return export_gguf(random_ckpt, tmp_path_factory.mktemp("gguf_vocab") / "model.gguf").path


@pytest.fixture(scope="module")
def exported(trained_ckpt: Path, tmp_path_factory) -> dict[str, Path]:
    """The trained checkpoint exported once per dtype."""
    out = tmp_path_factory.mktemp("gguf_files")
    return {d: export_gguf(trained_ckpt, out / f"model-{d}.gguf", d).path for d in convert_gguf.DTYPES}


def load_llama(path: Path, **kwargs):
    """llama.cpp (llama_cpp.Llama) with every logit kept and an f32 KV cache; `vocab_only=True` for tokenizing."""
    llama_cpp = pytest.importorskip("llama_cpp")  # requirements-dev.txt builds it from source
    return llama_cpp.Llama(model_path=str(path), n_ctx=MAX_LEN, n_batch=MAX_LEN, n_threads=1, logits_all=True,
                           type_k=F32, type_v=F32, verbose=False, **kwargs)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits (T, vocab) for a sequence, from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def our_logits(ckpt: Path, ids: list[int]) -> np.ndarray:
    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def fuzz_texts(corpus: list[str], n: int = 300, seed: int = 0) -> list[str]:
    """Random slices of the corpus (cut mid-word, mid-indent) and random strings of awkward characters."""
    rng = random.Random(seed)
    pool = list("ab xyz  \t\n\r0123456789<>/s_▁éß数据😀\u0301\u00a0")
    out = []
    for _ in range(n):
        doc = rng.choice(corpus)
        start = rng.randrange(len(doc))
        out.append(doc[start : start + rng.randint(1, 900)])  # some past 512 chars, where encode() cuts chunks
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))).replace("▁", ""))
    return out


# ---- tokenizer parity -------------------------------------------------------------------------------------------


def test_token_ids_match_llama_cpp(vocab_gguf: Path, tiny_tokenizer: Tokenizer, tiny_corpus_texts: list[str]):
    llm = load_llama(vocab_gguf, vocab_only=True)
    texts = TEXTS + fuzz_texts(tiny_corpus_texts)
    for text in texts:
        ours = tiny_tokenizer.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours, repr(text)
        # add_bos=True asks for the model's own BOS/EOS policy: none, as in encode() and run_inference.py.
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ours, repr(text)
    long_doc = "".join(tiny_corpus_texts[:8])
    assert len(long_doc) > 4 * 512  # encode() cuts this one into chunks; llama.cpp does not
    assert llm.tokenize(long_doc.encode(), add_bos=False) == tiny_tokenizer.encode(long_doc)


def test_detokenize_matches_ours(vocab_gguf: Path, tiny_tokenizer: Tokenizer):
    llm = load_llama(vocab_gguf, vocab_only=True)
    for text in [*TEXTS, "literal ▁ marker"]:
        ids = tiny_tokenizer.encode(text)
        assert llm.detokenize(ids).decode("utf-8") == tiny_tokenizer.decode(ids) == text


def test_literal_space_marker_reads_as_space_in_llama_cpp(vocab_gguf: Path, tiny_tokenizer: Tokenizer):
    """The documented limit: llama.cpp tokenizes a text as if each U+2581 in it were a space."""
    llm = load_llama(vocab_gguf, vocab_only=True)
    for text in ["▁", "a▁b", "x ▁▁ y", "▁leading and trailing▁"]:
        got = llm.tokenize(text.encode(), add_bos=False)
        assert got == tiny_tokenizer.encode(text.replace("▁", " "))
        assert got != tiny_tokenizer.encode(text)


def test_merge_hazard_is_named_and_real(tmp_path: Path, capsys):
    """With pieces "<s" and "</s" (HTML, trained without splitting by Unicode script, which our trainer never
    does) llama.cpp merges the texts "<s>" and "</s>" into BOS and EOS; the exporter names both texts, and texts
    without them still match."""
    rng = random.Random(0)
    tags = ["span", "script", "strong", "select", "small", "style", "s", "section", "source", "sub", "sup"]
    html = [" ".join(f"<{t}>{rng.choice('abc')}</{t}>" for t in rng.sample(tags, 6)) for _ in range(400)]
    tok = Tokenizer.load(sp_tokenizer(tmp_path, html, vocab_size=320, split_by_unicode_script=False))
    assert gguf_vocab(tok.directory, tok.vocab_size).hazards == ["<s>", "</s>"]
    cfg = tiny_cfg(tok.vocab_size)
    ckpt = save_model_checkpoint(tmp_path / "ckpt", Transformer(cfg), tok.directory)
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.gguf")]) == 0
    notes = capsys.readouterr().out
    assert "'<s>'" in notes and "'</s>'" in notes
    llm = load_llama(tmp_path / "m.gguf", vocab_only=True)
    assert llm.tokenize(b"<s>", add_bos=False) == [tok.bos_id] != tok.encode("<s>")
    assert llm.tokenize(b"</s>", add_bos=False) == [tok.eos_id] != tok.encode("</s>")
    others = [text for text in html if "<s>" not in text and "</s>" not in text]
    assert len(others) > 100
    for text in others:
        assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text)


def test_test_tokenizer_has_no_merge_hazard(tiny_tokenizer: Tokenizer):
    """So the "<s>"/"</s>" texts above are a real parity check, not an exempt case."""
    assert gguf_vocab(tiny_tokenizer.directory, tiny_tokenizer.vocab_size).hazards == []


# ---- model parity -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_greedy_continuations_match_llama_cpp(exported, trained_ckpt: Path, tiny_tokenizer: Tokenizer,
                                              tiny_corpus_texts: list[str]):
    llm = load_llama(exported["f32"])
    model, _ = load_model(trained_ckpt)
    ours = Generator(model, tiny_tokenizer)
    for doc in memorized_docs(tiny_tokenizer, tiny_corpus_texts):
        prompt = doc[:8]
        expected = ours.generate_ids([prompt], NEW_TOKENS)[0]
        assert len(set(expected)) >= 16  # the fixture model says something, not one repeated token
        llm.reset()
        llm.eval(prompt)
        got = []
        for _ in range(NEW_TOKENS):
            got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([got[-1]])
        assert got == expected, tiny_tokenizer.decode(prompt)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(LOGIT_TOL))
def test_logits_within_tolerance(exported, trained_ckpt: Path, tiny_tokenizer: Tokenizer, tiny_corpus_texts, dtype):
    ids = tiny_tokenizer.encode("".join(tiny_corpus_texts[:4]))[:MAX_LEN]
    ref = our_logits(trained_ckpt, ids)
    got = llama_logits(load_llama(exported[dtype]), ids)
    assert np.abs(ref).max() > 5  # logits of a trained model, not all near zero
    max_tol, mean_tol = LOGIT_TOL[dtype]
    assert np.abs(got - ref).max() <= max_tol
    assert np.abs(got - ref).mean() <= mean_tol


@pytest.mark.parametrize("n_kv_heads,tied,theta", [(4, True, 500000.0), (1, False, 10000.0), (1, True, 10000.0)])
def test_random_model_logits_match(tmp_path: Path, tiny_tokenizer: Tokenizer, n_kv_heads, tied, theta):
    """MHA/MQA, tied head (no output tensor: llama.cpp reuses token_embd), two RoPE bases, large random weights."""
    cfg = tiny_cfg(tiny_tokenizer.vocab_size, n_kv_heads=n_kv_heads, tie_embeddings=tied, rope_theta=theta)
    model = Transformer(cfg)
    randomize(model, seed=3)
    ckpt = save_model_checkpoint(tmp_path / "ckpt", model, tiny_tokenizer.directory)
    path = export_gguf(ckpt, tmp_path / "m.gguf").path
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (96,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = our_logits(ckpt, ids)
    got = llama_logits(load_llama(path), ids)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# ---- file contents ----------------------------------------------------------------------------------------------


def read_fields(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> storage type name) of a GGUF file, via gguf's reader."""
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t.tensor_type.name for t in reader.tensors}


def test_metadata_and_tensor_types(random_ckpt: Path, tmp_path: Path, tiny_tokenizer: Tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer.directory / MODEL_FILE))
    for dtype in convert_gguf.DTYPES:
        fields, tensors = read_fields(export_gguf(random_ckpt, tmp_path / f"{dtype}.gguf", dtype).path)
        assert fields["general.architecture"] == "llama"
        assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
        assert fields["tokenizer.ggml.model"] == "llama"
        assert fields["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        assert fields["tokenizer.ggml.scores"] == pytest.approx([sp.get_score(i) for i in range(sp.get_piece_size())])
        assert fields["tokenizer.ggml.add_space_prefix"] is False
        assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False
        ids = [fields[f"tokenizer.ggml.{k}_token_id"] for k in ("unknown", "bos", "eos", "padding")]
        assert ids == [tiny_tokenizer.unk_id, tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id]
        template = tiny_tokenizer.directory / "chat_template.jinja"  # tokenizers trained now carry the template
        assert fields.get("tokenizer.chat_template") == (template.read_text() if template.is_file() else None)
        matrix = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
        assert tensors["blk.1.attn_q.weight"] == tensors["output.weight"] == tensors["token_embd.weight"] == matrix
        assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == "F32"


def test_padded_vocab_tied_head_chat_template_and_q8_fallback(tmp_path: Path, tiny_tokenizer: Tokenizer, capsys):
    """Model rows beyond the tokenizer become unused, suppressed entries; a tied head writes no output tensor;
    tokenizer/chat_template.jinja is carried; q8_0 keeps matrices whose rows are not a multiple of 32 in f16."""
    vocab = tiny_tokenizer.vocab_size + 8
    cfg = tiny_cfg(vocab, tie_embeddings=True, multiple_of=16, ffn_hidden_dim=176)
    ckpt = save_model_checkpoint(tmp_path / "ckpt", Transformer(cfg), tiny_tokenizer.directory)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    (ckpt / TOKENIZER / "chat_template.jinja").write_text(template)
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0"]) == 0
    assert "kept in f16" in capsys.readouterr().out
    fields, tensors = read_fields(tmp_path / "m.gguf")
    padding = list(range(tiny_tokenizer.vocab_size, vocab))
    assert len(fields["tokenizer.ggml.tokens"]) == vocab
    assert [fields["tokenizer.ggml.token_type"][i] for i in padding] == [gguf.TokenType.UNUSED] * 8
    assert fields["tokenizer.ggml.suppress_tokens"] == padding
    assert fields["tokenizer.chat_template"] == template
    assert "output.weight" not in tensors
    assert tensors["blk.0.ffn_down.weight"] == "F16" and tensors["blk.0.ffn_up.weight"] == "Q8_0"
    llm = load_llama(tmp_path / "m.gguf")
    assert llm.metadata["tokenizer.chat_template"] == template
    assert llm.n_vocab() == vocab


# ---- refusals and command line ----------------------------------------------------------------------------------


def sp_tokenizer(tmp_path: Path, corpus: list[str], normalizer: dict | None = None, **options) -> Path:
    """A tokenizer directory trained directly with SentencePiece, for settings our trainer never uses;
    `normalizer` fields are set in the saved model afterwards (for those the BPE trainer rejects)."""
    out = tmp_path / "sp_tok"
    out.mkdir()
    base = dict(model_type="bpe", vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
                add_dummy_prefix=False, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                minloglevel=2)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, **{**base, **options})
    proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
    for key, value in (normalizer or {}).items():
        setattr(proto.normalizer_spec, key, value)
    (out / MODEL_FILE).write_bytes(proto.SerializeToString())
    return out


@pytest.mark.parametrize("options,message", [
    ({"add_dummy_prefix": True}, "add_dummy_prefix"),
    ({"normalization_rule_name": "nmt_nfkc"}, "normalization"),
    ({"remove_extra_whitespaces": True}, "remove_extra_whitespaces"),
    ({"normalizer": {"escape_whitespaces": False}}, "escape_whitespaces"),
    ({"model_type": "unigram"}, "UNIGRAM"),
    ({"user_defined_symbols": ["<|user|>"]}, "user-defined"),
])
def test_inexpressible_tokenizers_are_refused(tmp_path: Path, tiny_corpus_texts, options, message):
    tok_dir = sp_tokenizer(tmp_path, tiny_corpus_texts[:100], **options)
    with pytest.raises(DataError, match=message):
        gguf_vocab(tok_dir, 400)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_writes_and_overwrites(random_ckpt: Path, tmp_path: Path):
    out = tmp_path / "sub" / "m.gguf"
    first = run_cli("--checkpoint", str(random_ckpt), "--out", str(out), "--dtype", "f16")
    assert first.returncode == 0 and first.stdout.startswith(f"wrote {out}")
    assert read_fields(out)[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    again = run_cli("--checkpoint", str(random_ckpt), "--out", str(out), "--overwrite")
    assert again.returncode == 0
    assert read_fields(out)[0]["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]  # no temporary file left


@pytest.mark.slow
def test_cli_bad_inputs(random_ckpt: Path, tmp_path: Path):
    existing = tmp_path / "old.gguf"
    existing.write_bytes(b"keep me")
    no_tok = save_model_checkpoint(tmp_path / "no_tok", Transformer(tiny_cfg(512)))
    ckpt_files = sorted(p.relative_to(random_ckpt) for p in random_ckpt.rglob("*"))
    cases = [
        (["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "a.gguf")], "does not exist"),
        (["--checkpoint", str(random_ckpt), "--out", str(existing)], "--overwrite"),
        (["--checkpoint", str(random_ckpt), "--out", str(random_ckpt / "m.gguf")], "inside the checkpoint"),
        (["--checkpoint", str(random_ckpt), "--out", str(random_ckpt), "--overwrite"], "inside the checkpoint"),
        (["--checkpoint", str(random_ckpt), "--out", str(tmp_path)], "is a directory"),
        (["--checkpoint", str(random_ckpt), "--out", str(tmp_path / "b.gguf"), "--dtype", "q4_0"], "--dtype 'q4_0'"),
        (["--checkpoint", str(no_tok), "--out", str(tmp_path / "c.gguf")], "no tokenizer/"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_tok", "old.gguf"]
    assert sorted(p.relative_to(random_ckpt) for p in random_ckpt.rglob("*")) == ckpt_files


def test_failed_write_leaves_nothing(random_ckpt: Path, tmp_path: Path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(random_ckpt, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
