"""Convert checkpoints between this project's format and a Hugging Face Llama directory.

    python scripts/convert_hf.py export --checkpoint DIR --out HF_DIR [--dtype float32|bfloat16|float16]
    python scripts/convert_hf.py import --hf HF_DIR --out DIR [--dtype float32|bfloat16|float16]

`export` takes a checkpoint directory or a training run directory (its latest checkpoint) and writes config.json,
model.safetensors, generation_config.json (when the tokenizer names BOS/EOS) and the tokenizer files, so that
`transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` gives a LlamaForCausalLM with the same logits.
`import` reads a local Llama directory (config.json + model.safetensors, or shards listed in
model.safetensors.index.json) and writes a weights-only checkpoint (model.safetensors, whose header holds the
model config) with the model's own tokenizer in tokenizer/ (tokenizer.json and its config files, tokenizer.model,
generation_config.json, chat_template.jinja; a directory with only a SentencePiece tokenizer.model gets a
tokenizer.json made by transformers). A chat template kept there is what run_inference.py --chat and the server
render conversations with. It prints the model section to put in a training config for `train.init_from`.

Only the weight names and the RoPE layout of wq/wk differ between the two formats; both are handled here, the
layout in exactly one function pair (`permute_for_hf`, `unpermute_from_hf`). The weights and configs are read and
written directly, without transformers; only our tokenizer's export (Tokenizer/hf_export.py) and the conversion of a
lone tokenizer.model use it. RoPE scaling of type llama3 (Llama 3.1/3.2) is read from either config layout
(transformers 5 `rope_parameters`, 4.x `rope_scaling` + `rope_theta`) and written back in both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if __name__ == "__main__":
    from core.cli import quiet_interrupts

    quiet_interrupts()  # a Ctrl-C during the imports below exits 130 without a traceback

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from core import cli  # noqa: E402
from core.atomic import atomic_directory, check_output_dir, mark_output_dir  # noqa: E402
from core.errors import CheckpointError, UserError  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from model.checkpoint import (  # noqa: E402
    TOKENIZER,
    load_model,
    model_state_dict,
    read_model_config,
    save_model_checkpoint,
)
from model.config import RopeScaling  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_WEIGHTS = "model.safetensors"
EXPORT_TOOL, IMPORT_TOOL = "convert_hf export", "convert_hf import"  # what --overwrite may replace
HF_INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
# The files of a Hugging Face tokenizer kept by import and written back by export, as they are.
# chat_template.jinja is where transformers saves a model's chat template (older ones: in tokenizer_config.json).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                      "chat_template.jinja", GENERATION_CONFIG)
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

# Our per-layer names -> Hugging Face per-layer names (both under their layer prefix).
LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}


# ---- RoPE layout: the only place that knows about it ----------------------------------------------------------


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection (n_heads * head_dim, dim) from our RoPE layout to Hugging Face's.

    Ours (Meta reference) rotates adjacent channels: within each head, rows (2i, 2i+1) form pair i. Hugging
    Face's `rotate_half` pairs row i with row i + head_dim/2. Within each head, row 2i moves to i and row 2i+1
    to i + head_dim/2; both q and k get the same reordering, so every q.k score (and so the model) is unchanged.
    `unpermute_from_hf` is the exact inverse.
    """
    rows, dim = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_for_hf`: Hugging Face's half-split q/k rows back to our adjacent-pair layout."""
    rows, dim = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, 2, head_dim // 2, dim).transpose(1, 2).reshape(rows, dim)


# ---- weight names ---------------------------------------------------------------------------------------------


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face LlamaForCausalLM name."""
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.weight"
    base = name.removesuffix(".weight")
    if base in TOP_NAMES and name.endswith(".weight"):
        return f"{TOP_NAMES[base]}.weight"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def _rope_heads(name: str, cfg: ModelConfig) -> int | None:
    """Heads in a q/k projection weight (the tensors whose rows carry the RoPE layout); None for the others."""
    if name.endswith("attention.wq.weight"):
        return cfg.n_heads
    if name.endswith("attention.wk.weight"):
        return cfg.kv_heads
    return None


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict (as saved, tied head absent) -> Hugging Face names and RoPE layout."""
    out = {}
    for name, w in state.items():
        n_heads = _rope_heads(name, cfg)
        out[hf_name(name)] = (w if n_heads is None else permute_for_hf(w, n_heads)).contiguous()
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors -> our names and RoPE layout; every tensor must be present with the right shape."""
    expected = _expected_shapes(cfg)
    wanted = {hf_name(name): name for name in expected}
    missing = sorted(h for h in wanted if h not in hf_state)
    if missing:
        raise CheckpointError(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    out = {}
    for hname, name in wanted.items():
        w = hf_state[hname]
        if tuple(w.shape) != expected[name]:
            raise CheckpointError(f"tensor {hname} has shape {tuple(w.shape)}, config.json implies {expected[name]}")
        n_heads = _rope_heads(name, cfg)
        out[name] = (w if n_heads is None else unpermute_from_hf(w, n_heads)).contiguous()
    return out


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight our checkpoint stores for `cfg` (a tied head is stored once)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    state = model.state_dict()
    if cfg.tie_embeddings:
        state.pop("output.weight")
    return {name: tuple(t.shape) for name, t in state.items()}


# ---- configs --------------------------------------------------------------------------------------------------


def hf_rope_parameters(cfg: ModelConfig) -> dict:
    """The transformers 5 `rope_parameters` of `cfg` (theta, and the llama3 scaling when there is one)."""
    scaling = cfg.rope_scaling
    if scaling.type == "none":
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {
        "rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor, "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_seq_len,
    }


def hf_config(cfg: ModelConfig, dtype: torch.dtype, special_ids: dict | None = None) -> dict:
    """config.json of the Hugging Face LlamaForCausalLM equivalent to `cfg`; special token ids null unless given."""
    rope = hf_rope_parameters(cfg)
    scaling = None if rope["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers >= 5 reads rope_parameters; 4.x reads the top-level rope_theta and rope_scaling (5.x
        # accepts both).
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
        **(special_ids or {}),
    }


_REQUIRED = object()


def _int(hf: dict, key: str, default: int | object | None = _REQUIRED) -> int | None:
    """A positive integer of config.json. Structural keys have no default: their absence is an error (no silent
    7B defaults); a key that may be absent or null gets `default`."""
    value = hf.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        what = "missing" if key not in hf else f"{value!r} ({type(value).__name__})"
        raise CheckpointError(f"config.json: {key!r} must be a positive integer, got {what}")
    return value


def _float(hf: dict, key: str, default: float, where: str = "") -> float:
    """A finite number of config.json (absent: `default`); `where` names the enclosing object."""
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"config.json: {where + key!r} must be a finite number, got {value!r} "
                              f"({type(value).__name__})")
    return float(value)


def _bool(hf: dict, key: str, default: bool) -> bool:
    value = hf.get(key, default)
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {key!r} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def _rope(hf: dict) -> tuple[float, RopeScaling]:
    """rope_theta and the RoPE scaling from either layout (5.x `rope_parameters`, 4.x top-level `rope_theta` +
    `rope_scaling`); scaling types other than llama3 are refused, naming the key."""
    key = "rope_parameters" if hf.get("rope_parameters") is not None else "rope_scaling"
    params = hf.get(key) or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"config.json: {key} must be an object, got {params!r}")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise CheckpointError("config.json: partial_rotary_factor != 1 is not supported")
    theta = _float(params, "rope_theta", 10000.0, f"{key}.") if "rope_theta" in params else \
        _float(hf, "rope_theta", 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, RopeScaling()
    if rope_type != "llama3":
        raise CheckpointError(
            f"config.json: {key}.rope_type {rope_type!r} is not supported (only 'default' and 'llama3')"
        )
    for name in LLAMA3_KEYS:
        if isinstance(params.get(name), bool) or not isinstance(params.get(name), (int, float)):
            raise CheckpointError(f"config.json: {key}.{name} is missing or not a number (llama3 RoPE needs it)")
    scaling = RopeScaling(
        type="llama3", factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_seq_len=int(params["original_max_position_embeddings"]),
    )
    return theta, scaling


def model_config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig for a Hugging Face Llama config.json dict; unsupported features raise CheckpointError."""
    if hf.get("model_type") != "llama":
        raise CheckpointError(f"config.json: model_type is {hf.get('model_type')!r}, only 'llama' is supported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"config.json: {key}=true is not supported (this model has no biases)")
    for key in ("sliding_window", "use_sliding_window"):
        if hf.get(key):
            raise CheckpointError(f"config.json: {key}={hf[key]!r} is not supported (attention is over all tokens)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    dim, n_heads = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    n_kv = _int(hf, "num_key_value_heads", n_heads)
    head_dim = _int(hf, "head_dim", None)
    theta, scaling = _rope(hf)
    cfg = ModelConfig(
        dim=dim,
        n_layers=_int(hf, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else n_kv,
        head_dim=head_dim,  # None: dim // n_heads, as in transformers
        vocab_size=_int(hf, "vocab_size"),
        ffn_hidden_dim=_int(hf, "intermediate_size"),
        norm_eps=_float(hf, "rms_norm_eps", 1e-6),  # LlamaConfig's default
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=_int(hf, "max_position_embeddings", 2048),  # LlamaConfig's default
        tie_embeddings=_bool(hf, "tie_word_embeddings", False),
        init_std=_float(hf, "initializer_range", 0.02),
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise CheckpointError(f"config.json describes a model this project cannot build: {e}") from None
    return cfg


# ---- files ----------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: invalid JSON, or bytes that are not UTF-8
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory: one model.safetensors, or the shards its index lists."""
    if (hf_dir / HF_INDEX).is_file():
        weight_map = _read_json(hf_dir / HF_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{hf_dir / HF_INDEX} has no weight_map")
        files = sorted(set(weight_map.values()))
    elif (hf_dir / HF_WEIGHTS).is_file():
        files = [HF_WEIGHTS]
    else:
        raise CheckpointError(f"{hf_dir} has neither {HF_WEIGHTS} nor {HF_INDEX} (only safetensors are supported)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = hf_dir / name
        if not path.is_file():
            raise CheckpointError(f"{HF_INDEX} lists {name}, which is missing from {hf_dir}")
        try:
            state.update(load_file(str(path)))
        except Exception as e:  # safetensors raises several types for truncated or foreign files
            raise CheckpointError(f"cannot read {path}: {e}") from None
    return state


def special_token_ids(hf_dir: Path) -> dict[str, int]:
    """{bos,eos,pad}_token_id named by the tokenizer files in `hf_dir`; empty when there are none."""
    if not (hf_dir / "tokenizer.json").is_file():
        return {}
    tok = _read_json(hf_dir / "tokenizer.json")
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, list):  # Unigram stores [piece, score] pairs; the id is the position
        vocab = {entry[0]: i for i, entry in enumerate(vocab)}
    ids = {**(vocab if isinstance(vocab, dict) else {}), **{t["content"]: t["id"] for t in tok.get("added_tokens", [])}}
    names = {}  # transformers 5 names the special tokens in tokenizer_config.json, 4.x also in special_tokens_map.json
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        if (hf_dir / file).is_file():
            names.update(_read_json(hf_dir / file))
    found = {}
    for kind in ("bos", "eos", "pad"):
        token = names.get(f"{kind}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token in ids:
            found[f"{kind}_token_id"] = ids[token]
    return found


# ---- tokenizers -----------------------------------------------------------------------------------------------


def _is_hf_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file()


def write_hf_tokenizer(tokenizer_dir: Path, out: Path) -> dict:
    """Write a checkpoint's tokenizer in Hugging Face form into `out`; returns the special ids for config.json.

    A kept Hugging Face tokenizer (an imported model's) is copied back as it is, and its generation_config.json
    names the ids (an eos_token_id may be a list, as in Llama 3.1 Instruct); ours is exported by hf_export.py.
    """
    if _is_hf_tokenizer(tokenizer_dir):
        for name in HF_TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out / name)
    else:
        from Tokenizer.hf_export import export_hf_tokenizer  # lazy: needs transformers

        export_hf_tokenizer(tokenizer_dir, out)
    ids = special_token_ids(out)
    if (out / GENERATION_CONFIG).is_file():
        generation = _read_json(out / GENERATION_CONFIG)
        ids.update({k: generation[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in generation})
    return ids


def keep_hf_tokenizer(hf_dir: Path, dest: Path) -> bool:
    """Copy the Hugging Face tokenizer of `hf_dir` into `dest`; False when `hf_dir` has none. A directory with
    only a SentencePiece tokenizer.model also gets the tokenizer.json that transformers converts it to, so that
    the ids are transformers' own (BOS, prefix space)."""
    present = [name for name in HF_TOKENIZER_FILES if (hf_dir / name).is_file()]
    if "tokenizer.json" not in present and "tokenizer.model" not in present:
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        shutil.copy2(hf_dir / name, dest / name)
    if "tokenizer.json" not in present:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"{hf_dir} has a tokenizer.model but no tokenizer.json: converting it needs "
                            "transformers (pip install -r requirements-dev.txt)") from None
        AutoTokenizer.from_pretrained(str(hf_dir)).backend_tokenizer.save(str(dest / "tokenizer.json"))
    return True


def generation_ids(ckpt_dir: Path, special_ids: dict[str, int]) -> dict:
    """generation_config.json's ids: a chat model's reply also ends at <|end_of_turn|>."""
    from Tokenizer import Tokenizer  # lazy, like the tokenizer export

    if _is_hf_tokenizer(ckpt_dir / TOKENIZER):  # an imported model's own tokenizer: its ids as they are
        return special_ids
    tokenizer = Tokenizer.load(ckpt_dir / TOKENIZER)
    if "eos_token_id" not in special_ids or not tokenizer.has_chat_tokens:
        return special_ids
    return {**special_ids, "eos_token_id": [special_ids["eos_token_id"], tokenizer.end_of_turn_id]}


# ---- the two directions ---------------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "float32",
                      overwrite: bool = False) -> Path:
    """Write a Hugging Face Llama directory for a checkpoint (or a run directory's latest checkpoint)."""
    out = Path(out)
    check_output_dir(out, [checkpoint], EXPORT_TOOL, overwrite)
    model, ckpt_dir = load_model(checkpoint, dtype=DTYPES[dtype])
    hf_state = to_hf_state_dict(model_state_dict(model), model.cfg)
    with atomic_directory(out) as tmp:
        special_ids = {}
        if (ckpt_dir / TOKENIZER).is_dir():
            special_ids = write_hf_tokenizer(ckpt_dir / TOKENIZER, tmp)
        config = hf_config(model.cfg, DTYPES[dtype], special_ids)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if special_ids and not (tmp / GENERATION_CONFIG).is_file():  # generate() then knows where to start and stop
            (tmp / GENERATION_CONFIG).write_text(json.dumps(generation_ids(ckpt_dir, special_ids), indent=2) + "\n")
        save_file(hf_state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        mark_output_dir(tmp, EXPORT_TOOL)
    return out


def import_checkpoint(
    hf_dir: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a weights-only checkpoint of ours for a local Hugging Face Llama directory, with the model's own
    tokenizer kept (or `tokenizer_dir`, one of ours, when given): run_inference.py and data preparation read it."""
    from Tokenizer import load_tokenizer

    hf_dir, out = Path(hf_dir), Path(out)
    if tokenizer_dir is not None:
        load_tokenizer(tokenizer_dir)  # a DataError naming the path if it is not a tokenizer
    if not hf_dir.is_dir():
        raise CheckpointError(f"Hugging Face directory does not exist: {hf_dir}")
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir} has no config.json")
    check_output_dir(out, [hf_dir] + ([tokenizer_dir] if tokenizer_dir else []), IMPORT_TOOL, overwrite)
    model_cfg = model_config_from_hf(_read_json(hf_dir / "config.json"))
    state = from_hf_state_dict(read_hf_weights(hf_dir), model_cfg)
    state = {name: w.to(DTYPES[dtype]) for name, w in state.items()}
    with torch.device("meta"):
        model = Transformer(model_cfg)
    if model_cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    # assign=True adopts the loaded tensors, so no full-size random init ever happens.
    model.load_state_dict(state, strict=True, assign=True)
    if model_cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight  # assign replaced the shared parameter; tie again
    with tempfile.TemporaryDirectory() as staging:
        if tokenizer_dir is None and keep_hf_tokenizer(hf_dir, Path(staging) / TOKENIZER):
            tokenizer_dir = Path(staging) / TOKENIZER
        if tokenizer_dir is not None:
            n = load_tokenizer(tokenizer_dir).vocab_size
            if n > model_cfg.vocab_size:
                raise CheckpointError(f"the tokenizer in {tokenizer_dir} has {n} ids but config.json's vocab_size "
                                      f"is {model_cfg.vocab_size}")
        return save_model_checkpoint(out, model, tokenizer_dir, written_by=IMPORT_TOOL)


# ---- command line ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the `export` / `import` subcommands."""
    parser = cli.ArgumentParser(description="Convert checkpoints to and from Hugging Face Llama directories.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="our checkpoint -> Hugging Face directory")
    exp.add_argument("--checkpoint", required=True, help="checkpoint directory or training run directory")
    exp.add_argument("--out", required=True, help="Hugging Face directory to write")
    imp = sub.add_parser("import", help="Hugging Face directory -> our checkpoint")
    imp.add_argument("--hf", required=True, help="local Hugging Face Llama directory")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    imp.add_argument("--tokenizer", default=None,
                     help="one of our tokenizer directories to include instead of the model's own")
    for p in (exp, imp):
        p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the written weights")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one conversion; bad input prints one `error:` line and returns 2."""
    args = parse_args(argv)

    def run() -> None:
        if args.command == "export":
            out = export_checkpoint(args.checkpoint, args.out, args.dtype, args.overwrite)
            print(f"wrote {out}")
            return
        out = import_checkpoint(args.hf, args.out, args.dtype, args.overwrite, args.tokenizer)
        print(f"wrote {out}")
        # Fine-tuning with train.init_from needs this exact architecture in the training YAML.
        model = {"model": dataclasses.asdict(read_model_config(out))}
        print("model section for a training config (train.init_from):\n" + yaml.safe_dump(model, sort_keys=False),
              end="")

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
