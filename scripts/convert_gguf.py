"""Export a checkpoint as one GGUF file for llama.cpp and Ollama (architecture "llama", tokenizer included).

    python scripts/convert_gguf.py --checkpoint DIR --out FILE.gguf [--dtype f32|f16|bf16|q8_0] [--overwrite]

DIR is a checkpoint directory or a training run directory (its latest checkpoint); it must hold the tokenizer.
The file is written with the `gguf` package (llama.cpp's own reader/writer) into a temporary file that is
renamed into place, so a failed export leaves nothing behind.

Layout: our weights keep Meta's names and Meta's RoPE convention (rotation of adjacent channel pairs), which is
exactly what llama.cpp's llama architecture computes ("normal" RoPE); its Hugging Face converter undoes the
Hugging Face row permutation of q/k to get there. So the tensors are renamed and never permuted here. Norm
weights stay f32 whatever --dtype says (as llama.cpp's converter does); with q8_0, a matrix whose rows are not a
multiple of 32 values cannot be quantized and is stored in f16 (the output names it).

The tokenizer metadata comes from Tokenizer/gguf_vocab.py, which documents the inputs llama.cpp tokenizes
differently; tokenizer/chat_template.jinja, when present, becomes tokenizer.chat_template.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if __name__ == "__main__":
    from core.cli import quiet_interrupts

    quiet_interrupts()  # a Ctrl-C during the imports below exits 130 without a traceback

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import MODEL_TENSOR, GGMLQuantizationType, LlamaFileType  # noqa: E402

from core import cli  # noqa: E402
from core.atomic import atomic_file  # noqa: E402
from core.errors import CheckpointError, UserError  # noqa: E402
from model import ModelConfig  # noqa: E402
from model.checkpoint import TOKENIZER, find_checkpoint, load_model, model_state_dict  # noqa: E402
from Tokenizer.gguf_vocab import GGUFVocab, gguf_vocab  # noqa: E402

ARCH = "llama"
CHAT_TEMPLATE = "chat_template.jinja"  # beside tokenizer.model in the checkpoint's tokenizer/ directory
# --dtype -> (file type recorded in general.file_type, storage of every matrix)
DTYPES = {
    "f32": (LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
    "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
    "bf16": (LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
}
# Our parameter names -> llama.cpp tensor kinds (per layer, then top level).
LAYER_TENSORS = {
    "attention_norm": MODEL_TENSOR.ATTN_NORM,
    "attention.wq": MODEL_TENSOR.ATTN_Q,
    "attention.wk": MODEL_TENSOR.ATTN_K,
    "attention.wv": MODEL_TENSOR.ATTN_V,
    "attention.wo": MODEL_TENSOR.ATTN_OUT,
    "ffn_norm": MODEL_TENSOR.FFN_NORM,
    "feed_forward.w1": MODEL_TENSOR.FFN_GATE,
    "feed_forward.w2": MODEL_TENSOR.FFN_DOWN,
    "feed_forward.w3": MODEL_TENSOR.FFN_UP,
}
TOP_TENSORS = {"tok_embeddings": MODEL_TENSOR.TOKEN_EMBD, "norm": MODEL_TENSOR.OUTPUT_NORM,
               "output": MODEL_TENSOR.OUTPUT}


@dataclass
class ExportReport:
    """What export_gguf wrote, and what the user should know about it."""

    path: Path
    dtype: str
    kept_f16: list[str] = field(default_factory=list)  # q8_0 only: matrices stored in f16 instead
    hazards: list[str] = field(default_factory=list)  # texts llama.cpp may tokenize differently (gguf_vocab)


def gguf_name(name: str) -> str:
    """Our parameter name (e.g. layers.3.attention.wq.weight) -> the llama.cpp tensor name (blk.3.attn_q.weight)."""
    base = name.removesuffix(".weight")
    parts = base.split(".", 2)
    if parts[0] == "layers" and len(parts) == 3 and parts[2] in LAYER_TENSORS:
        return gguf.TENSOR_NAMES[LAYER_TENSORS[parts[2]]].format(bid=int(parts[1])) + ".weight"
    if base in TOP_TENSORS:
        return gguf.TENSOR_NAMES[TOP_TENSORS[base]] + ".weight"
    raise KeyError(f"no GGUF name for parameter {name!r}")


def encode_tensor(w: torch.Tensor, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """A float32 weight in the storage `qtype` asks for (vectors stay f32; q8_0 falls back to f16 when the rows
    cannot be cut into blocks of 32); returns (data, storage type used)."""
    data = w.detach().to(torch.float32).numpy()
    if data.ndim == 1:
        qtype = GGMLQuantizationType.F32
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, GGMLQuantizationType.F16), GGMLQuantizationType.F16


def _add_model_metadata(writer: gguf.GGUFWriter, cfg: ModelConfig, name: str, ftype: LlamaFileType) -> None:
    writer.add_name(name)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer_metadata(writer: gguf.GGUFWriter, vocab: GGUFVocab, chat_template: str | None) -> None:
    writer.add_tokenizer_model("llama")  # llama.cpp's SentencePiece tokenizer
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(False)  # like Tokenizer.encode() and run_inference.py (--bos is opt-in)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # the tokenizer is trained without a dummy prefix
    if vocab.padding:
        # Model rows the tokenizer never produces; our sampler never picks them, llama.cpp's sampler (llama-cli,
        # llama-server) applies this list as a -inf bias. The key is llama.cpp's, not yet named in gguf-py.
        writer.add_array("tokenizer.ggml.suppress_tokens", vocab.padding)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def _check_out(out: Path, given: Path, ckpt_dir: Path, overwrite: bool) -> None:
    """Refuse an --out that is a directory, lies in (or is) the checkpoint, or exists without --overwrite."""
    target = out.resolve()
    for root in (given.resolve(), ckpt_dir.resolve()):
        if target == root or root in target.parents:
            raise UserError(f"--out {out} is inside the checkpoint {given}; write the GGUF file elsewhere")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as model.gguf")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out} already exists (pass --overwrite to replace it)")


def export_gguf(checkpoint: str | Path, out: str | Path, dtype: str = "f32", overwrite: bool = False) -> ExportReport:
    """Write one GGUF file (weights, hyperparameters, tokenizer) for a checkpoint or a run's latest checkpoint."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt_dir = find_checkpoint(checkpoint)
    _check_out(out, checkpoint, ckpt_dir, overwrite)
    tokenizer_dir = ckpt_dir / TOKENIZER
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {TOKENIZER}/ directory: a GGUF file needs the tokenizer")
    model, _ = load_model(ckpt_dir)
    vocab = gguf_vocab(tokenizer_dir, model.cfg.vocab_size)
    template_path = tokenizer_dir / CHAT_TEMPLATE
    chat_template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None

    ftype, qtype = DTYPES[dtype]
    report = ExportReport(out, dtype, hazards=vocab.hazards)
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _add_model_metadata(writer, model.cfg, checkpoint.resolve().name, ftype)
        _add_tokenizer_metadata(writer, vocab, chat_template)
        for name, w in model_state_dict(model).items():  # a tied head is absent: llama.cpp then reuses token_embd
            data, used = encode_tensor(w, qtype)
            if used != qtype and w.ndim > 1:
                report.kept_f16.append(gguf_name(name))
            writer.add_tensor(gguf_name(name), data, raw_dtype=used)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse --checkpoint, --out, --dtype and --overwrite."""
    parser = cli.ArgumentParser(description="Export a checkpoint as a GGUF file for llama.cpp and Ollama.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or training run directory")
    parser.add_argument("--out", required=True, help="GGUF file to write, e.g. model.gguf")
    parser.add_argument("--dtype", default="f32", help=f"storage of the weight matrices: {', '.join(DTYPES)}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one export; bad input prints one `error:` line and returns 2."""
    args = parse_args(argv)

    def run() -> None:
        report = export_gguf(args.checkpoint, args.out, args.dtype, args.overwrite)
        size_mb = report.path.stat().st_size / 1e6
        print(f"wrote {report.path} ({size_mb:.1f} MB, {report.dtype})")
        if report.kept_f16:
            print(f"note: kept in f16 (rows not a multiple of 32, q8_0 impossible): {', '.join(report.kept_f16)}")
        for text in report.hazards:
            print(f"note: llama.cpp may merge the literal text {text!r} into one special token; texts containing "
                  "it can tokenize differently there")

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
