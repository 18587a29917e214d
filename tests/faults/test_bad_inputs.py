"""Every bad input to every command: exactly one `error:` line naming the bad key, flag, path or value, exit code
2, no traceback, and nothing created or changed on disk.

Rows: 164 bad inputs (run_train.py 53, run_inference.py 31, convert_hf.py 31, prepare_data.py 28,
train_tokenizer.py 13, plot_logs.py 8).

Each row runs the real command in a subprocess from the repo root, against the shared read-only `world`
(tests/faults/conftest.py) and a directory of its own; both are snapshotted (paths, sizes, mtimes, content
hashes) before and after. The rows run in a small thread pool, since each subprocess pays for its imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

from tests.faults.conftest import World
from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "train": "run_train.py",
    "infer": "run_inference.py",
    "prepare": "data/prepare_data.py",
    "tokenizer": "Tokenizer/train_tokenizer.py",
    "convert": "scripts/convert_hf.py",
    "plot": "scripts/plot_logs.py",
}
TIMEOUT = 180  # seconds per command: each one should fail in a few
HASHED_BYTES = 1 << 26  # files beyond this are compared by size and mtime only


@dataclass(frozen=True)
class Copy:
    """A file of the case's directory that is a copy of another file (a path template)."""

    source: str


@dataclass(frozen=True)
class Case:
    """One bad input. `args`, `expect` and text `files` are templates: $tmp is the case's own directory, $cfg a
    valid config in it (train runs into $tmp/run), and every field of World ($ckpt, $run, $hf, ...) is there."""

    id: str
    command: str  # a key of SCRIPTS
    args: list[str | bytes]  # bytes reach the command as raw (possibly non-UTF-8) argv bytes
    expect: list[str]  # what the error line must contain
    files: dict[str, str | bytes | Copy] = field(default_factory=dict)  # written into $tmp first
    stdin: bytes = b""


@dataclass(frozen=True)
class HFConfig:
    """config.json of the world's Hugging Face export with some fields changed ("null" stands for JSON null)."""

    changes: tuple


def hf_config(**changes) -> dict[str, HFConfig | Copy]:
    """A Hugging Face directory $tmp/hf: the world's export, with config.json fields changed."""
    return {"hf/config.json": HFConfig(tuple(changes.items())), "hf/model.safetensors": Copy("$hf/model.safetensors")}


def train(*overrides: str, files: dict | None = None, expect: list[str], id: str) -> Case:
    return Case(id, "train", ["--config", "$cfg", *overrides], expect, files or {})


def infer(*args: str | bytes, expect: list[str], id: str, ckpt: str = "$ckpt", stdin: bytes = b"",
          files: dict | None = None) -> Case:
    # An otherwise valid run: the world's model has max_seq_len 64, below the default --max-new-tokens.
    base = [*(["--checkpoint", ckpt] if ckpt else []), "--max-new-tokens", "8"]
    if not any(a in ("--prompt", "--interactive") for a in args):
        args = ("--prompt", "hello", *args)
    return Case(id, "infer", [*base, *args, "--device", "cpu"] if "--device" not in args else [*base, *args],
                expect, files or {}, stdin)


def imp(files: dict, expect: list[str], id: str, hf: str = "$tmp/hf", *more: str) -> Case:
    """convert_hf.py import of `hf` (by default the case's own copy of the world's export, see hf_config)."""
    return Case(id, "convert", ["import", "--hf", hf, "--out", "$tmp/ck", *more], expect, files)


WEIGHTS = {"hf/model.safetensors": Copy("$hf/model.safetensors")}
DUPLICATE_KEYS = "model:\n  dim: 64\ntrain:\n  seed: 1\n  max_steps: 5\n  seed: 2\n"
BINARY = bytes(range(256)) * 4  # not UTF-8, NUL bytes included
JSONL_BAD_LINE = '{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n'

CASES: list[Case] = [
    # ---- run_train.py: the config file ------------------------------------------------------------------------
    Case("train-no-config-flag", "train", [], ["--config"]),
    Case("train-unknown-flag", "train", ["--config", "$cfg", "--bogus"], ["--bogus"]),
    Case("train-config-missing", "train", ["--config", "$tmp/nope.yaml"], ["$tmp/nope.yaml"]),
    Case("train-config-is-directory", "train", ["--config", "$tmp"], ["$tmp"]),
    Case("train-config-binary", "train", ["--config", "$tmp/model.bin"], ["$tmp/model.bin", "UTF-8"],
         {"model.bin": BINARY}),
    Case("train-yaml-duplicate-key", "train", ["--config", "$tmp/c.yaml"], ["$tmp/c.yaml", "duplicate key 'seed'"],
         {"c.yaml": DUPLICATE_KEYS}),
    Case("train-yaml-syntax", "train", ["--config", "$tmp/c.yaml"], ["$tmp/c.yaml", "invalid YAML"],
         {"c.yaml": "model: [dim: 64\n"}),
    Case("train-yaml-not-mapping", "train", ["--config", "$tmp/c.yaml"], ["$tmp/c.yaml", "mapping"],
         {"c.yaml": "- model\n- train\n"}),
    Case("train-yaml-section-not-mapping", "train", ["--config", "$tmp/c.yaml"], ["'model'"],
         {"c.yaml": "model: 64\n"}),
    Case("train-base-cycle", "train", ["--config", "$tmp/a.yaml"], ["cycle", "a.yaml", "b.yaml"],
         {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}),
    Case("train-base-missing", "train", ["--config", "$tmp/a.yaml"], ["$tmp/gone.yaml"],
         {"a.yaml": "base: gone.yaml\n"}),
    # ---- run_train.py: overrides and values ---------------------------------------------------------------
    train("train.max_steps", expect=["train.max_steps"], id="train-override-no-equals"),
    train("max_steps=5", expect=["max_steps=5"], id="train-override-no-section"),
    train("train.max_steps=[1", expect=["train.max_steps"], id="train-override-bad-yaml"),
    train("train.seed.low=1", expect=["train.seed"], id="train-override-through-a-value"),
    train("model.n_head=4", expect=["model.n_head", "model.n_heads"], id="train-unknown-key"),
    train("train.max_steps=ten", expect=["train.max_steps", "ten"], id="train-wrong-type-str"),
    train("model.dim=true", expect=["model.dim", "True"], id="train-wrong-type-bool"),
    train("model.norm_eps=.nan", expect=["model.norm_eps", "nan"], id="train-norm-eps-nan"),
    train("optim.lr=.inf", expect=["optim.lr", "inf"], id="train-lr-inf"),
    train(f"train.seed={2**63}", expect=["train.seed", str(2**63)], id="train-seed-2**63"),
    train(f"train.seed={2**64 + 5}", expect=["train.seed", str(2**64 + 5)], id="train-seed-above-2**64"),
    train("train.batch_size=0", expect=["train.batch_size"], id="train-batch-size-zero"),
    train("train.micro_batch_size=3", expect=["train.micro_batch_size"], id="train-batch-not-divisible"),
    train("train.seq_len=1000", expect=["train.seq_len", "model.max_seq_len"], id="train-seq-len-too-long"),
    train("train.precision=fp8", expect=["train.precision", "fp8"], id="train-precision-typo"),
    train("train.device=xla", expect=["train.device", "xla"], id="train-device-xla"),
    train("train.device=meta", expect=["train.device", "meta"], id="train-device-meta"),
    train("data.val_fraction=.nan", expect=["data.val_fraction"], id="train-val-fraction-nan"),
    train("data.tokenizer_sample_mb=0", expect=["data.tokenizer_sample_mb"], id="train-sample-mb-zero"),
    train("data.sources=[]", expect=["data.sources"], id="train-sources-empty"),
    train("train.eval_tasks_limit=0", expect=["train.eval_tasks_limit", "0"], id="train-eval-tasks-limit-zero"),
    # ---- run_train.py: inputs met when training starts ------------------------------------------------------
    train("model.dim=1000000000", expect=["memory", "model.dim"], id="train-model-too-large-for-memory"),
    train("model.n_layers=100000", "model.dim=4096", "model.n_heads=32",
          expect=["memory", "model.n_layers"], id="train-model-too-deep-for-memory"),
    train("data.sources=$tmp/missing.txt", "data.dataset_dir=$tmp/ds",
          expect=["data.sources", "$tmp/missing.txt"], id="train-source-missing"),
    train("data.sources=$tmp/bad.jsonl", "data.dataset_dir=$tmp/ds", files={"bad.jsonl": JSONL_BAD_LINE},
          expect=["data.sources", "$tmp/bad.jsonl:3"], id="train-source-jsonl-malformed-line"),
    train("data.sources=$tmp/docs.jsonl", "data.dataset_dir=$tmp/ds", "data.text_field=body",
          files={"docs.jsonl": '{"text": "a"}\n'}, expect=["$tmp/docs.jsonl", "body"],
          id="train-source-jsonl-missing-text-field"),
    train("data.sources=$tmp/empty", "data.dataset_dir=$tmp/ds", files={"empty/notes.bin": b"x"},
          expect=["data.sources", "$tmp/empty"], id="train-source-dir-without-sources"),
    train("data.sources=$tmp/other", files={"other/a.py": "x = 1\n"},
          expect=["data.dataset_dir", "$dataset"], id="train-dataset-built-from-other-sources"),
    train("model.vocab_size=512", expect=["model.vocab_size", "384"], id="train-vocab-disagrees-with-tokenizer"),
    train("data.tokenizer_dir=$tmp/notatok", "data.dataset_dir=$tmp/ds", files={"notatok/readme.txt": "hi"},
          expect=["data.tokenizer_dir", "$tmp/notatok"], id="train-tokenizer-dir-not-a-tokenizer"),
    train("train.resume=never", "train.out_dir=$tmp/full", files={"full/keep.txt": "mine"},
          expect=["train.out_dir", "$tmp/full"], id="train-resume-never-nonempty-out-dir"),
    train("train.resume=$tmp/nowhere", expect=["$tmp/nowhere"], id="train-resume-path-missing"),
    train(files={"run/.lock": '{"pid": 4242, "host": "gpu-node-7", "started": 0}\n'},
          expect=["train.out_dir", "$tmp/run", "in use", "gpu-node-7"], id="train-out-dir-in-use-by-another-run"),
    train("train.init_from=$tmp/nowhere", expect=["$tmp/nowhere"], id="train-init-from-missing"),
    train("data.format=chat", "data.sources=[$tmp/c.jsonl]", files={"c.jsonl": '{"prompt": "a", "completion": "b"}\n'},
          expect=["data.format=chat needs a tokenizer", "train.init_from"], id="train-chat-without-tokenizer"),
    train("data.format=chat", "train.init_from=$ckpt", "train.shift_windows=true", "data.sources=[$tmp/c.jsonl]",
          files={"c.jsonl": '{"prompt": "a", "completion": "b"}\n'}, expect=["train.shift_windows", "data.format=chat"],
          id="train-chat-with-shift-windows"),
    train("data.format=chat", "train.init_from=$ckpt", "data.dataset_dir=$tmp/ds",
          expect=["data.sources", "is a plain text file; conversations come as .jsonl"],
          id="train-chat-with-pretraining-sources"),
    train("data.format=chat", "train.init_from=$ckpt", "data.sources=[$tmp/notes.txt]", "data.dataset_dir=$tmp/ds",
          files={"notes.txt": "hello\n"}, expect=["notes.txt is a plain text file"], id="train-chat-plain-text-file"),
    train("data.format=chat", "train.init_from=$ckpt", "data.sources=[$tmp/c.jsonl]", "data.dataset_dir=$tmp/ds",
          files={"c.jsonl": '{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "bot", "content": "x"}]}\n'},
          expect=["c.jsonl:2", "messages[0].role must be one of system, user, assistant"],
          id="train-chat-malformed-row"),
    train("train.eval_tasks=[mine,no_such_task]", "train.eval_tasks_include=$tmp/tasks",
          files={"tasks/mine.yaml": "task: mine\ndataset_path: json\noutput_type: loglikelihood\n"},
          expect=["train.eval_tasks", "no_such_task"], id="train-eval-task-unknown"),
    train("train.eval_tasks=[mine]", "train.eval_tasks_include=$tmp/none",
          expect=["train.eval_tasks_include", "$tmp/none"], id="train-eval-tasks-include-missing"),
    train("train.init_from=$mismatched", expect=["tok_embeddings.weight"],
          id="train-init-from-config-disagrees-with-weights"),
    # ---- run_inference.py ---------------------------------------------------------------------------------
    Case("infer-no-checkpoint-flag", "infer", ["--prompt", "x"], ["--checkpoint"]),
    Case("infer-no-prompt", "infer", ["--checkpoint", "$ckpt", "--device", "cpu"], ["--prompt"]),
    infer(expect=["$tmp/nope"], id="infer-checkpoint-missing", ckpt="$tmp/nope"),
    infer(expect=["$tmp"], id="infer-checkpoint-not-a-checkpoint", ckpt="$tmp", files={"notes.txt": "x"}),
    infer(expect=["$ckpt/model.safetensors"], id="infer-checkpoint-is-a-file", ckpt="$ckpt/model.safetensors"),
    infer(expect=["$tmp/c/model.safetensors"], id="infer-checkpoint-corrupt-weights", ckpt="$tmp/c",
          files={"c/model.safetensors": BINARY}),
    infer(expect=["tok_embeddings.weight"], id="infer-checkpoint-config-disagrees-with-weights", ckpt="$mismatched"),
    infer(expect=["$huge", "memory"], id="infer-checkpoint-too-large-for-memory", ckpt="$huge"),
    infer("--prompt", "", expect=["prompt"], id="infer-prompt-empty"),
    infer("--prompt", b"caf\xe9 \xff", expect=["--prompt", "UTF-8"], id="infer-prompt-argv-invalid-utf8"),
    infer("--prompt", "-", stdin=b"ok \xc3\x28 then", expect=["--prompt", "UTF-8"],
          id="infer-prompt-stdin-invalid-utf8"),
    infer("--prompt", "-", stdin=b"", expect=["prompt"], id="infer-prompt-stdin-empty"),
    infer("--max-new-tokens", "0", expect=["--max-new-tokens", "0"], id="infer-max-new-tokens-zero"),
    infer("--max-new-tokens", "100000", expect=["--max-new-tokens", "100000"], id="infer-max-new-tokens-too-long"),
    infer("--max-new-tokens", "ten", expect=["--max-new-tokens", "ten"], id="infer-max-new-tokens-not-int"),
    infer("--temperature", "-0.5", expect=["--temperature", "-0.5"], id="infer-temperature-negative"),
    infer("--temperature", "nan", expect=["--temperature", "nan"], id="infer-temperature-nan"),
    infer("--top-k", "-1", expect=["--top-k", "-1"], id="infer-top-k-negative"),
    infer("--top-p", "0", expect=["--top-p", "0"], id="infer-top-p-zero"),
    infer("--top-p", "1.5", expect=["--top-p", "1.5"], id="infer-top-p-above-one"),
    infer("--top-p", "nan", expect=["--top-p", "nan"], id="infer-top-p-nan"),
    infer("--min-p", "nan", expect=["--min-p", "nan"], id="infer-min-p-nan"),
    infer("--repetition-penalty", "nan", expect=["--repetition-penalty", "nan"], id="infer-repetition-penalty-nan"),
    infer("--num-samples", "0", expect=["--num-samples", "0"], id="infer-num-samples-zero"),
    infer("--seed", str(2**63), expect=["--seed", str(2**63)], id="infer-seed-2**63"),
    infer("--seed", str(2**63 - 1), "--num-samples", "2", expect=["--seed", str(2**63 - 1)],
          id="infer-seed-plus-samples-past-2**63"),
    infer("--seed", "-1", expect=["--seed", "-1"], id="infer-seed-negative"),
    infer("--stop", "", expect=["--stop"], id="infer-stop-empty"),
    infer("--device", "xla", expect=["--device", "xla"], id="infer-device-xla"),
    infer("--device", "meta", expect=["--device", "meta"], id="infer-device-meta"),
    infer("--dtype", "bfloat", expect=["--dtype", "bfloat"], id="infer-dtype-typo"),
    # ---- data/prepare_data.py -----------------------------------------------------------------------------
    Case("prepare-no-input-flag", "prepare", ["--out", "$tmp/ds", "--vocab-size", "384"], ["--input"]),
    Case("prepare-input-missing", "prepare", ["--input", "$tmp/nope.txt", "--out", "$tmp/ds", "--vocab-size", "384"],
         ["$tmp/nope.txt"]),
    Case("prepare-input-glob-matches-nothing", "prepare", ["--input", "$tmp/*.jsonl", "--out", "$tmp/ds",
                                                           "--vocab-size", "384"], ["$tmp/*.jsonl"]),
    Case("prepare-input-unknown-kind", "prepare", ["--input", "$tmp/data.bin", "--out", "$tmp/ds", "--vocab-size",
                                                   "384"], ["$tmp/data.bin"], {"data.bin": BINARY}),
    Case("prepare-input-unknown-builtin", "prepare", ["--input", "builtin:python-stdlb", "--out", "$tmp/ds",
                                                      "--vocab-size", "384"], ["builtin:python-stdlb"]),
    Case("prepare-input-unknown-scheme", "prepare", ["--input", "s3://bucket/x", "--out", "$tmp/ds", "--vocab-size",
                                                     "384"], ["s3"]),
    Case("prepare-input-jsonl-malformed-line", "prepare", ["--input", "$tmp/bad.jsonl", "--out", "$tmp/ds",
                                                           "--vocab-size", "384"], ["$tmp/bad.jsonl:3"],
         {"bad.jsonl": JSONL_BAD_LINE}),
    Case("prepare-input-jsonl-missing-field", "prepare", ["--input", "$tmp/d.jsonl", "--out", "$tmp/ds",
                                                          "--tokenizer", "$tokenizer", "--text-field", "body"],
         ["$tmp/d.jsonl", "body"], {"d.jsonl": '{"text": "a"}\n'}),
    Case("prepare-input-only-empty-documents", "prepare", ["--input", "$tmp/e.txt", "--out", "$tmp/ds",
                                                           "--tokenizer", "$tokenizer"], ["$tmp/e.txt"],
         {"e.txt": ""}),
    Case("prepare-vocab-size-zero", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "0"],
         ["--vocab-size", "0"]),
    Case("prepare-vocab-size-too-small", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "10"],
         ["--vocab-size", "10"]),
    Case("prepare-vocab-size-not-int", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "1e3"],
         ["--vocab-size", "1e3"]),
    Case("prepare-vocab-and-tokenizer", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "384",
                                                    "--tokenizer", "$tokenizer"], ["--tokenizer", "--vocab-size"]),
    Case("prepare-no-tokenizer-no-vocab", "prepare", ["--input", "$corpus", "--out", "$tmp/ds"],
         ["$tmp/ds/tokenizer", "--vocab-size"]),
    Case("prepare-tokenizer-missing", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                  "$tmp/nope"], ["$tmp/nope"]),
    # --force once replaced the source directory with the dataset: a tool never writes into or over its input.
    Case("prepare-out-is-the-input-with-force", "prepare", ["--input", "$corpus", "--out", "$corpus", "--tokenizer",
                                                            "$tokenizer", "--force"], ["--out", "$corpus", "overlaps"]),
    Case("prepare-out-inside-the-input", "prepare", ["--input", "$corpus", "--out", "$corpus/ds", "--tokenizer",
                                                     "$tokenizer"], ["--out", "$corpus/ds", "overlaps"]),
    Case("prepare-val-fraction-one", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                 "$tokenizer", "--val-fraction", "1"], ["--val-fraction", "1"]),
    Case("prepare-val-fraction-nan", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                 "$tokenizer", "--val-fraction", "nan"], ["--val-fraction", "nan"]),
    Case("prepare-val-fraction-negative", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                      "$tokenizer", "--val-fraction", "-0.1"],
         ["--val-fraction", "-0.1"]),
    Case("prepare-workers-negative", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                 "$tokenizer", "--workers", "-1"], ["--workers", "-1"]),
    Case("prepare-shard-tokens-zero", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--tokenizer",
                                                  "$tokenizer", "--shard-tokens", "0"], ["--shard-tokens", "0"]),
    Case("prepare-sample-mb-zero", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "384",
                                               "--tokenizer-sample-mb", "0"], ["--tokenizer-sample-mb", "0"]),
    Case("prepare-sample-mb-nan", "prepare", ["--input", "$corpus", "--out", "$tmp/ds", "--vocab-size", "384",
                                              "--tokenizer-sample-mb", "nan"], ["--tokenizer-sample-mb", "nan"]),
    Case("prepare-out-is-a-file", "prepare", ["--input", "$corpus", "--out", "$tmp/f.txt", "--tokenizer",
                                              "$tokenizer"], ["--out", "$tmp/f.txt"], {"f.txt": "mine"}),
    Case("prepare-out-under-a-file", "prepare", ["--input", "$corpus", "--out", "$tmp/f.txt/ds", "--tokenizer",
                                                 "$tokenizer"], ["$tmp/f.txt"], {"f.txt": "mine"}),
    Case("prepare-out-holds-other-files", "prepare", ["--input", "$corpus", "--out", "$tmp/mine", "--tokenizer",
                                                      "$tokenizer"], ["--out", "$tmp/mine"], {"mine/a.txt": "x"}),
    Case("prepare-out-built-from-other-inputs", "prepare", ["--input", "$tmp/a.py", "--out", "$dataset"],
         ["$dataset"], {"a.py": "x = 1\n"}),
    # ---- Tokenizer/train_tokenizer.py ---------------------------------------------------------------------
    Case("tokenizer-no-vocab-flag", "tokenizer", ["--input", "$corpus", "--out", "$tmp/tok"], ["--vocab-size"]),
    Case("tokenizer-out-inside-the-input", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out",
                                                         "$corpus/tok"], ["--out", "$corpus/tok", "overlaps"]),
    Case("tokenizer-input-missing", "tokenizer", ["--input", "$tmp/nope", "--vocab-size", "384", "--out", "$tmp/tok"],
         ["$tmp/nope"]),
    Case("tokenizer-input-empty-file", "tokenizer", ["--input", "$tmp/e.txt", "--vocab-size", "384", "--out",
                                                     "$tmp/tok"], ["$tmp/e.txt"], {"e.txt": ""}),
    Case("tokenizer-out-is-a-file", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/f"],
         ["--out", "$tmp/f"], {"f": "mine"}),
    Case("tokenizer-out-holds-other-files", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out",
                                                          "$tmp/d"], ["--out", "$tmp/d"], {"d/a.txt": "x"}),
    Case("tokenizer-sample-mb-nan", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/tok",
                                                  "--sample-mb", "nan"], ["--sample-mb", "nan"]),
    Case("tokenizer-sample-mb-inf", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/tok",
                                                  "--sample-mb", "inf"], ["--sample-mb", "inf"]),
    Case("tokenizer-sample-mb-zero", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/tok",
                                                   "--sample-mb", "0"], ["--sample-mb", "0"]),
    Case("tokenizer-vocab-size-too-small", "tokenizer", ["--input", "$corpus", "--vocab-size", "100", "--out",
                                                         "$tmp/tok"], ["--vocab-size", "100"]),
    Case("tokenizer-vocab-size-too-large-for-text", "tokenizer", ["--input", "$tmp/a.txt", "--vocab-size", "50000",
                                                                  "--out", "$tmp/tok"], ["50000"],
         {"a.txt": "tiny text\n"}),
    Case("tokenizer-seed-negative", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/tok",
                                                  "--seed", "-1"], ["--seed", "-1"]),
    Case("tokenizer-seed-too-large", "tokenizer", ["--input", "$corpus", "--vocab-size", "384", "--out", "$tmp/tok",
                                                   "--seed", str(2**64)], ["--seed", str(2**64)]),
    # ---- scripts/convert_hf.py export ---------------------------------------------------------------------
    Case("export-checkpoint-missing", "convert", ["export", "--checkpoint", "$tmp/nope", "--out", "$tmp/hf"],
         ["$tmp/nope"]),
    Case("export-not-a-checkpoint", "convert", ["export", "--checkpoint", "$hf", "--out", "$tmp/hf"], ["$hf"]),
    Case("export-checkpoint-corrupt-weights", "convert", ["export", "--checkpoint", "$tmp/c", "--out", "$tmp/hf"],
         ["$tmp/c/model.safetensors"], {"c/model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"}),
    Case("export-checkpoint-config-disagrees-with-weights", "convert",
         ["export", "--checkpoint", "$mismatched", "--out", "$tmp/hf"], ["tok_embeddings.weight"]),
    Case("export-out-is-a-file", "convert", ["export", "--checkpoint", "$ckpt", "--out", "$tmp/f"], ["$tmp/f"],
         {"f": "mine"}),
    Case("export-out-under-a-file", "convert", ["export", "--checkpoint", "$ckpt", "--out", "$tmp/f/hf"], ["$tmp/f"],
         {"f": "mine"}),
    Case("export-out-is-its-own-input", "convert", ["export", "--checkpoint", "$ckpt", "--out", "$ckpt",
                                                    "--overwrite"], ["--out", "$ckpt", "overlaps"]),
    Case("export-overwrite-a-foreign-directory", "convert", ["export", "--checkpoint", "$ckpt", "--out", "$tmp/d",
                                                             "--overwrite"], ["--overwrite", "$tmp/d"],
         {"d/a.txt": "mine"}),
    Case("export-dtype-typo", "convert", ["export", "--checkpoint", "$ckpt", "--out", "$tmp/hf", "--dtype", "bf16"],
         ["--dtype", "bf16"]),
    # ---- scripts/convert_hf.py import ---------------------------------------------------------------------
    Case("import-hf-missing", "convert", ["import", "--hf", "$tmp/nope", "--out", "$tmp/ck"], ["$tmp/nope"]),
    Case("import-hf-without-config", "convert", ["import", "--hf", "$tmp/h", "--out", "$tmp/ck"],
         ["$tmp/h", "config.json"], {"h/model.safetensors": Copy("$hf/model.safetensors")}),
    imp({"hf/config.json": "{not json", **WEIGHTS}, ["$tmp/hf/config.json"], "import-config-not-json"),
    imp({"hf/config.json": BINARY, **WEIGHTS}, ["$tmp/hf/config.json"], "import-config-binary"),
    imp(hf_config(hidden_size="64"), ["hidden_size", "'64'"], "import-hidden-size-string"),
    imp(hf_config(hidden_size=True), ["hidden_size", "True"], "import-hidden-size-bool"),
    imp(hf_config(hidden_size=0), ["hidden_size", "0"], "import-hidden-size-zero"),
    imp(hf_config(num_attention_heads="null"), ["num_attention_heads", "None"], "import-heads-null"),
    imp(hf_config(num_key_value_heads="2"), ["num_key_value_heads", "'2'"], "import-kv-heads-string"),
    imp(hf_config(head_dim="16"), ["head_dim", "'16'"], "import-head-dim-string"),
    imp(hf_config(rope_theta=[10000.0], rope_parameters="null"), ["rope_theta", "[10000.0]"],
        "import-rope-theta-list"),
    imp(hf_config(rope_parameters={"rope_type": "default", "rope_theta": "big"}), ["rope_theta", "'big'"],
        "import-rope-theta-string"),
    imp(hf_config(rms_norm_eps=float("nan")), ["rms_norm_eps", "nan"], "import-rms-norm-eps-nan"),
    imp(hf_config(max_position_embeddings="long"), ["max_position_embeddings", "'long'"],
        "import-max-positions-string"),
    imp(hf_config(tie_word_embeddings="yes"), ["tie_word_embeddings", "'yes'"], "import-tie-embeddings-string"),
    imp(hf_config(model_type="gpt2"), ["model_type", "gpt2"], "import-model-type-gpt2"),
    Case("import-weights-missing", "convert", ["import", "--hf", "$tmp/h", "--out", "$tmp/ck"],
         ["$tmp/h", "model.safetensors"], {"h/config.json": Copy("$hf/config.json")}),
    Case("import-weights-corrupt", "convert", ["import", "--hf", "$tmp/h", "--out", "$tmp/ck"],
         ["$tmp/h/model.safetensors"], {"h/config.json": Copy("$hf/config.json"), "h/model.safetensors": BINARY}),
    imp(hf_config(vocab_size=400), ["model.embed_tokens.weight"], "import-weights-wrong-shape"),
    Case("import-tokenizer-not-a-tokenizer", "convert", ["import", "--hf", "$hf", "--out", "$tmp/ck", "--tokenizer",
                                                         "$tmp"], ["$tmp"]),
    Case("import-out-inside-its-input", "convert", ["import", "--hf", "$hf", "--out", "$hf/ours"],
         ["--out", "$hf/ours", "overlaps"]),
    Case("import-out-is-a-file", "convert", ["import", "--hf", "$hf", "--out", "$tmp/f"], ["$tmp/f"], {"f": "mine"}),
    # ---- scripts/plot_logs.py -----------------------------------------------------------------------------
    Case("plot-no-run-dir", "plot", [], ["out_dir"]),
    Case("plot-run-dir-missing", "plot", ["$tmp/nope"], ["$tmp/nope"]),
    Case("plot-dir-without-metrics", "plot", ["$tmp"], ["$tmp/metrics.jsonl"], {"notes.txt": "x"}),
    Case("plot-metrics-not-json", "plot", ["$tmp/r"], ["$tmp/r/metrics.jsonl", "line 2"],
         {"r/metrics.jsonl": '{"step": 1, "loss": 5.0}\nnot json at all\n{"step": 2, "loss": 4.0}\n'}),
    Case("plot-metrics-record-without-step", "plot", ["$tmp/r"], ["$tmp/r/metrics.jsonl", "line 1", "step"],
         {"r/metrics.jsonl": '{"loss": 5.0}\n{"step": 2, "loss": 4.0}\n'}),
    Case("plot-metrics-binary", "plot", ["$tmp/r"], ["$tmp/r/metrics.jsonl"], {"r/metrics.jsonl": BINARY}),
    Case("plot-metrics-empty", "plot", ["$tmp/r"], ["$tmp/r/metrics.jsonl"], {"r/metrics.jsonl": ""}),
    Case("plot-out-is-a-file", "plot", ["$run", "--out", "$tmp/f"], ["--out", "$tmp/f"], {"f": "mine"}),
]


# ---- running a case ---------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots`: kind, and for files size, mtime and content hash (big files: size and mtime)."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted([root, *root.rglob("*")]):
            st = path.lstat()
            if path.is_symlink():
                state[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                state[str(path)] = ("dir",)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if st.st_size <= HASHED_BYTES else None
                state[str(path)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return state


def _materialize(case: Case, tmp: Path, subst: dict[str, str], world: World) -> None:
    for rel, content in case.files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Copy):
            shutil.copyfile(Template(content.source).substitute(subst), path)
        elif isinstance(content, HFConfig):
            config = json.loads((world.hf / "config.json").read_text())
            config.update({k: None if v == "null" else v for k, v in content.changes})
            path.write_text(json.dumps(config))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(Template(content).substitute(subst))
    if case.command == "train":
        tiny_config(tmp / "run", world.data).save(tmp / "cfg.yaml")


@dataclass
class Outcome:
    returncode: int
    stderr: str
    before: dict[str, tuple]
    after: dict[str, tuple]
    subst: dict[str, str]


def run_case(case: Case, world: World, tmp: Path) -> Outcome:
    """Write the case's files, run its command, and snapshot its directory and the world around it."""
    tmp.mkdir(parents=True)
    subst = {**world.placeholders(), "tmp": str(tmp), "cfg": str(tmp / "cfg.yaml")}
    _materialize(case, tmp, subst, world)
    args = [a if isinstance(a, bytes) else Template(a).substitute(subst) for a in case.args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONUTF8": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    before = snapshot(tmp, world.root)
    proc = subprocess.run([sys.executable, str(ROOT / SCRIPTS[case.command]), *args], input=case.stdin,
                          capture_output=True, timeout=TIMEOUT, cwd=ROOT, env=env)
    after = snapshot(tmp, world.root)
    return Outcome(proc.returncode, proc.stderr.decode("utf-8", "replace"), before, after, subst)


@pytest.fixture(scope="module")
def outcomes(world: World, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) \
        -> dict[str, Outcome]:
    """Every selected case run once, a few at a time (most of each run is waiting for imports)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and "case" in item.callspec.params}
    base = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(run_case, c, world, base / re.sub(r"\W", "_", c.id))
                   for c in CASES if c.id in selected}
        return {cid: f.result() for cid, f in futures.items()}


def test_row_count():
    """The docstring's count is the table's, every id is unique, every command is covered, and there are >= 80."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    assert {c.command for c in CASES} == set(SCRIPTS)
    assert len(CASES) >= 80
    assert f"Rows: {len(CASES)} bad inputs" in __doc__


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome]):
    out = outcomes[case.id]
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    for text in case.expect:
        assert Template(text).substitute(out.subst) in errors[0], out.stderr
    assert out.returncode == 2, out.stderr
    assert out.after == out.before, "files created or changed: " + ", ".join(
        sorted(k for k in out.before.keys() | out.after.keys() if out.before.get(k) != out.after.get(k)))
