"""Hugging Face interop: logits parity both ways against transformers' Llama, sharding, round trip, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from core.errors import CheckpointError, DataError
from model import ModelConfig, Transformer
from model.checkpoint import load_model, save_model_checkpoint
from model.config import RopeScaling
from scripts import convert_hf
from scripts.convert_hf import (
    export_checkpoint,
    import_checkpoint,
    main,
    model_config_from_hf,
    permute_for_hf,
    unpermute_from_hf,
)
from tests.helpers import randomize

hf_logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "convert_hf.py"
VOCAB, DIM, N_HEADS, N_LAYERS, FFN, MAX_LEN = 128, 64, 4, 2, 96, 64
TOL = 1e-4

# (n_kv_heads, tied, rope_theta): MHA, GQA and MQA; tied and untied; both thetas, in four cases.
CASES = [
    pytest.param(4, False, 10000.0, id="mha-untied-theta1e4"),
    pytest.param(2, True, 500000.0, id="gqa-tied-theta5e5"),
    pytest.param(1, False, 500000.0, id="mqa-untied-theta5e5"),
    pytest.param(1, True, 10000.0, id="mqa-tied-theta1e4"),
]


def tiny_hf(n_kv_heads: int, tied: bool, theta: float, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A tiny random transformers Llama, eager attention, fp32 (`overrides`: other LlamaConfig arguments)."""
    fields = dict(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=FFN, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=n_kv_heads, max_position_embeddings=MAX_LEN,
        rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": theta},
        attn_implementation="eager",
    )
    cfg = LlamaConfig(**{**fields, **overrides})
    model = LlamaForCausalLM(cfg)
    randomize(model, seed)
    return model.eval()


def tiny_ours(n_kv_heads: int, tied: bool, theta: float, seed: int = 0, **overrides) -> Transformer:
    """A tiny random model of ours, the same shape as tiny_hf."""
    fields = dict(dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=n_kv_heads, vocab_size=VOCAB,
                  ffn_hidden_dim=FFN, norm_eps=1e-5, rope_theta=theta, max_seq_len=MAX_LEN, tie_embeddings=tied)
    model = Transformer(ModelConfig(**{**fields, **overrides}))
    randomize(model, seed)
    return model.eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))


def hf_logits(model: LlamaForCausalLM, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=toks).logits


def our_logits(model: Transformer, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(toks)


def save_ours(model: Transformer, directory: Path) -> Path:
    return save_model_checkpoint(directory, model)


# ---- RoPE layout ----------------------------------------------------------------------------------------------


def test_permute_and_unpermute_are_inverse_and_move_rows():
    w = torch.randn(3 * 8, 5)
    permuted = permute_for_hf(w, n_heads=3)
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_from_hf(permuted, n_heads=3), w)
    # Head 1, pair 2 of ours (rows 2*2, 2*2+1) lands on rows 2 and 2 + head_dim/2 of that head in HF's layout.
    assert torch.equal(permuted[8 + 2], w[8 + 4]) and torch.equal(permuted[8 + 2 + 4], w[8 + 5])


def test_parity_fails_without_the_rope_permutation(tmp_path, monkeypatch):
    """Control: skipping the q/k row permutation must break parity, so the parity tests can fail."""
    hf = tiny_hf(2, False, 10000.0)
    hf.save_pretrained(tmp_path / "hf")
    monkeypatch.setattr(convert_hf, "unpermute_from_hf", lambda w, n_heads: w)
    import_checkpoint(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    toks = tokens()
    assert (our_logits(ours, toks) - hf_logits(hf, toks)).abs().max() > 1e-2


# ---- parity ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_kv_heads", "tied", "theta"), CASES)
def test_import_matches_transformers_logits(tmp_path, n_kv_heads, tied, theta):
    hf = tiny_hf(n_kv_heads, tied, theta)
    hf.save_pretrained(tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    assert (ours.cfg.kv_heads, ours.cfg.tie_embeddings, ours.cfg.rope_theta) == (n_kv_heads, tied, theta)
    toks = tokens()
    expected = hf_logits(hf, toks)
    assert expected.std() > 0.5  # logits far from zero, so the tolerance below is meaningful
    assert (our_logits(ours, toks) - expected).abs().max() <= TOL


@pytest.mark.parametrize(("n_kv_heads", "tied", "theta"), CASES)
def test_export_loads_in_transformers_with_matching_logits(tmp_path, n_kv_heads, tied, theta):
    ours = tiny_ours(n_kv_heads, tied, theta)
    save_ours(ours, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    hf, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert isinstance(hf, LlamaForCausalLM)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.rope_parameters["rope_theta"] == theta
    assert hf.config.rope_parameters["rope_type"] == "default"
    assert (hf.config.num_key_value_heads, hf.config.tie_word_embeddings) == (n_kv_heads, tied)
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tied
    toks = tokens()
    expected = our_logits(ours, toks)
    assert expected.std() > 0.5
    assert (hf_logits(hf.eval(), toks) - expected).abs().max() <= TOL


def test_export_llama3_scaling_and_head_dim_load_in_transformers(tmp_path):
    """Our model with llama3 RoPE scaling and heads wider than dim / n_heads, exported: transformers reads both."""
    scaling = RopeScaling(type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_seq_len=16)
    ours = tiny_ours(2, True, 500000.0, head_dim=32, rope_scaling=scaling)
    save_ours(ours, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    assert hf.config.head_dim == 32
    assert hf.config.rope_parameters == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16}
    toks = torch.randint(0, VOCAB, (2, MAX_LEN), generator=torch.Generator().manual_seed(2))  # 4x the threshold
    expected = our_logits(ours, toks)
    assert (hf_logits(hf.eval(), toks) - expected).abs().max() <= TOL


def test_sharded_import_matches_transformers_logits(tmp_path):
    hf = tiny_hf(2, False, 500000.0, seed=3)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    import_checkpoint(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    toks = tokens()
    assert (our_logits(ours, toks) - hf_logits(hf, toks)).abs().max() <= TOL


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_round_trip_ours_hf_ours_is_identical(tmp_path, tied):
    # multiple_of rounding (not an explicit ffn_hidden_dim) exercises the derived SwiGLU width.
    ours = tiny_ours(2, tied, 500000.0, ffn_hidden_dim=None, multiple_of=32)
    save_ours(ours, tmp_path / "a")
    export_checkpoint(tmp_path / "a", tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "b")
    before, after = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    model_b, _ = load_model(tmp_path / "b")
    derived = lambda c: (c.kv_heads, c.head_dim, c.hidden_dim)
    changed = {"n_kv_heads", "ffn_hidden_dim", "multiple_of"}  # written explicitly after import; derived equal
    for f in dataclasses.fields(ModelConfig):
        if f.name not in changed:
            assert getattr(model_b.cfg, f.name) == getattr(ours.cfg, f.name), f.name
    assert derived(model_b.cfg) == derived(ours.cfg)


def test_export_dtype_bfloat16(tmp_path):
    save_ours(tiny_ours(2, False, 10000.0), tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf", dtype="bfloat16")
    state = load_file(str(tmp_path / "hf/model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf/config.json").read_text())["dtype"] == "bfloat16"


# ---- configs --------------------------------------------------------------------------------------------------

BASE_HF = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "vocab_size": 128, "intermediate_size": 96}


@pytest.mark.parametrize(
    ("extra", "theta"),
    [
        ({}, 10000.0),
        ({"rope_theta": 500000.0}, 500000.0),  # transformers 4.x layout
        ({"rope_theta": 500000.0, "rope_scaling": None}, 500000.0),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 250000.0}}, 250000.0),  # 5.x layout
    ],
    ids=["absent", "v4-top-level", "v4-null-scaling", "v5-rope-parameters"],
)
def test_rope_theta_read_from_either_layout(extra, theta):
    assert model_config_from_hf({**BASE_HF, **extra}).rope_theta == theta


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"model_type": "mistral"}, "only 'llama'"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
         "rope_parameters.low_freq_factor is missing"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type 'linear' is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
         "rope_parameters.rope_type 'yarn' is not supported"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_scaling.rope_type 'dynamic' is not supported"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"sliding_window": 4096}, "sliding_window=4096 is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"head_dim": 7}, "head_dim (7, dim / n_heads unless set) must be even"),
        ({"head_dim": 0}, "'head_dim' must be a positive integer"),
        ({"intermediate_size": None}, "'intermediate_size'"),
    ],
    ids=["model-type", "llama3-incomplete", "linear-rope-v4", "yarn-rope-v5", "dynamic-rope", "attn-bias", "mlp-bias",
         "sliding-window", "gelu", "odd-head-dim", "zero-head-dim", "no-ffn"],
)
def test_unsupported_configs_are_rejected(extra, message):
    with pytest.raises(CheckpointError, match=r"^config\.json[: ]") as err:
        model_config_from_hf({**BASE_HF, **extra})
    assert message in str(err.value) and "\n" not in str(err.value)


# ---- command line ---------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the script as a file from the repo root, the way users do."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_export_from_a_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    ours = tiny_ours(4, True, 10000.0)
    save_ours(ours, run_dir / "checkpoints" / "step_0000010")
    (run_dir / "checkpoints" / "latest").write_text("step_0000010\n")
    result = run_cli("export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    toks = tokens()
    assert (hf_logits(hf.eval(), toks) - our_logits(ours, toks)).abs().max() <= TOL


def test_cli_import(tmp_path):
    hf = tiny_hf(1, False, 500000.0, seed=5)
    hf.save_pretrained(tmp_path / "hf")
    result = run_cli("import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours"))
    assert result.returncode == 0, result.stderr
    ours, _ = load_model(tmp_path / "ours")
    toks = tokens()
    assert (our_logits(ours, toks) - hf_logits(hf, toks)).abs().max() <= TOL
    # The printed model section, pasted into a training config, is the imported architecture.
    printed = yaml.safe_load(result.stdout.split("(train.init_from):\n", 1)[1])
    assert printed == {"model": dataclasses.asdict(ours.cfg)}


def test_cli_error_is_one_line_and_exit_code_2(tmp_path):
    result = run_cli("import", "--hf", str(tmp_path / "missing"), "--out", str(tmp_path / "ours"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(tmp_path / "missing") in result.stderr
    assert not (tmp_path / "ours").exists()


def hf_dir_without_config(tmp_path: Path) -> Path:
    (tmp_path / "hf").mkdir()
    return tmp_path / "hf"


def hf_dir_not_llama(tmp_path: Path) -> Path:
    tiny_hf(2, False, 10000.0).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf/config.json").read_text())
    (tmp_path / "hf/config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    return tmp_path / "hf"


def hf_dir_missing_tensor(tmp_path: Path) -> Path:
    tiny_hf(2, False, 10000.0).save_pretrained(tmp_path / "hf")
    state = load_file(str(tmp_path / "hf/model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "hf/model.safetensors"))
    return tmp_path / "hf"


def hf_dir_without_weights(tmp_path: Path) -> Path:
    tiny_hf(2, False, 10000.0).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf/model.safetensors").unlink()
    return tmp_path / "hf"


@pytest.mark.parametrize(
    ("make_dir", "message"),
    [
        (hf_dir_without_config, "has no config.json"),
        (hf_dir_not_llama, "model_type is 'gpt2'"),
        (hf_dir_missing_tensor, "missing tensors: model.layers.1.mlp.up_proj.weight"),
        (hf_dir_without_weights, "neither model.safetensors nor"),
    ],
    ids=["no-config", "not-llama", "missing-tensor", "no-weights"],
)
def test_import_bad_input_exits_2(tmp_path, capsys, make_dir, message):
    hf_dir = make_dir(tmp_path)
    capsys.readouterr()  # drop whatever building the directory printed
    assert main(["import", "--hf", str(hf_dir), "--out", str(tmp_path / "ours")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "ours").exists()


def test_export_bad_input_exits_2(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint path does not exist") and err.count("\n") == 1


def test_overwrite_replaces_only_its_own_output(tmp_path, capsys):
    save_ours(tiny_ours(2, False, 10000.0), tmp_path / "ckpt")
    argv = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]
    assert main(argv) == 0
    assert main(argv) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # an export replaces an export
    (tmp_path / "other").mkdir()
    (tmp_path / "other/keep.txt").write_text("x")
    assert main([*argv[:-1], str(tmp_path / "other"), "--overwrite"]) == 2  # not something export wrote
    assert "only replaces a directory that convert_hf export wrote" in capsys.readouterr().err
    assert (tmp_path / "other/keep.txt").read_text() == "x"


@pytest.mark.parametrize("out", ["ckpt", "ckpt/hf", "."])
def test_never_writes_into_or_over_its_input(tmp_path, capsys, out):
    """`export --checkpoint RUN --out RUN --overwrite` once deleted the run it read."""
    save_ours(tiny_ours(2, False, 10000.0), tmp_path / "ckpt")
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    argv = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / out), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / out} overlaps the input") and err.count("\n") == 1
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


# ---- tokenizer ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny byte-fallback SentencePiece tokenizer trained here on a seeded synthetic corpus."""
    pytest.importorskip("sentencepiece")
    from Tokenizer.train_tokenizer import train_tokenizer

    rng = random.Random(0)
    words = ["def", "return", "value", "count", "total", "index", "alpha", "beta", "print", "if", "else", "for"]
    texts = [" ".join(rng.choice(words) for _ in range(40)) + f" {i}\n" for i in range(300)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts, vocab_size=350, out_dir=out, progress=False)
    return out


def test_export_with_tokenizer_loads_in_autotokenizer(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer, GenerationConfig

    from Tokenizer import Tokenizer

    ours_tok = Tokenizer.load(tokenizer_dir)
    model = tiny_ours(2, True, 10000.0, vocab_size=ours_tok.vocab_size)
    save_model_checkpoint(tmp_path / "ckpt", model, tokenizer_dir=tokenizer_dir)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def total(value):\n    return value + 42  # ünïcode ✓"
    ids = ours_tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    config = json.loads((tmp_path / "hf/config.json").read_text())
    expected_ids = {"bos_token_id": ours_tok.bos_id, "eos_token_id": ours_tok.eos_id, "pad_token_id": ours_tok.pad_id}
    assert {k: config[k] for k in expected_ids} == expected_ids
    generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    # A reply also ends at the chat tokenizer's end-of-turn.
    assert generation.bos_token_id == ours_tok.bos_id
    assert generation.eos_token_id == [ours_tok.eos_id, ours_tok.end_of_turn_id]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager")
    toks = torch.tensor([ids])
    assert (hf_logits(hf.eval(), toks) - our_logits(model, toks)).abs().max() <= TOL


def test_import_with_our_tokenizer(tmp_path, tiny_tokenizer):
    from Tokenizer import Tokenizer

    tiny_hf(2, True, 10000.0, vocab_size=tiny_tokenizer.vocab_size).save_pretrained(tmp_path / "hf")
    out = import_checkpoint(tmp_path / "hf", tmp_path / "ours", tokenizer_dir=tiny_tokenizer.directory)
    assert Tokenizer.load(out / "tokenizer").content_hash == tiny_tokenizer.content_hash
    with pytest.raises(DataError, match="nowhere"):
        import_checkpoint(tmp_path / "hf", tmp_path / "ours2", tokenizer_dir=tmp_path / "nowhere")
    assert not (tmp_path / "ours2").exists()
    tiny_hf(2, True, 10000.0).save_pretrained(tmp_path / "small")  # 128 embeddings for a 512-id tokenizer
    with pytest.raises(CheckpointError, match=r"has 512 ids but config\.json.s vocab_size is 128"):
        import_checkpoint(tmp_path / "small", tmp_path / "ours3", tokenizer_dir=tiny_tokenizer.directory)
    assert not (tmp_path / "ours3").exists()
