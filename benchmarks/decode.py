"""Decode speed: prefill and decode tokens/s, KV cache vs recomputation, eager vs compiled, vs transformers.

    python benchmarks/decode.py --config configs/tiny.yaml            # random weights of a preset
    python benchmarks/decode.py --checkpoint out/tiny                  # a trained checkpoint or run directory

For each batch size (1 and 8 by default) the same random prompt of --prompt-len tokens is continued greedily by
exactly --new-tokens tokens, every way:

    run_inference defaults  exactly what `run_inference.py --checkpoint C --prompt P --max-new-tokens N` does
                      (batch 1 only): the checkpoint loaded with the CLI's default flags (device and dtype auto,
                      no compile, KV cache), its default sampling (temperature 0.8, seed 0), the text streamed
                      piece by piece to a sink, then the speed line; the prompt is the random tokens as text. It
                      samples, so its tokens are not compared, and EOS may end it early (rates use the tokens made)
    kv-cache          our prefill + eager one-token decode loop (int positions), greedy, with the CPU weight
                      layout of the CLI's loader (inference/one_token.py: decode_layout)
    kv-cache+compile  the same with the decode step compiled (static cache; CUDA graphs on GPU)
    no-kv-cache       our model re-run over the whole context at every step
    hf generate       the same weights exported with scripts/convert_hf.py, run by transformers' generate()
                      (greedy, min_new_tokens = max_new_tokens so EOS cannot end it early)

With --config (random weights, no tokenizer) the defaults row needs a checkpoint with a tokenizer: one is trained
on the built-in corpus (1 MB, a second or two) and saved with the weights to a temporary directory.
The vs_hf column is each row's decode tokens/s over transformers' at the same batch size. The cpu_ columns
repeat both from process CPU time instead of wall time (CPU only): on a machine shared with other jobs a run's
wall time also counts the time slices others took, so these are the steadier figures there (with 1 intra-op
thread, CPU time is the run's own compute; with more, it includes their spin-waiting).

Timing: a run of 1 new token measures prefill; decode tokens/s is B * (N - 1) over (time of N tokens - time of
1 token). Each figure is the best of --repeats runs after a warm-up (which also compiles); the variants take
turns run by run, so load from elsewhere falls on all of them alike. On CUDA it adds
achieved GB/s: weight bytes plus the KV-cache bytes each decode step reads, against a measured device-copy
bandwidth. Prints a table and writes JSON (environment, settings, rows) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import environment, print_table, write_result  # noqa: E402
from core import cli  # noqa: E402
from core.device import resolve_device, resolve_dtype  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.sources import iter_documents  # noqa: E402
from inference import cli as inference_cli  # noqa: E402
from inference.decode import COMPILE_FAILED, DecodeStep, generate_tokens  # noqa: E402
from inference.generator import Generator  # noqa: E402
from inference.one_token import decode_layout  # noqa: E402
from inference.sampling import Sampler, SamplingParams  # noqa: E402
from model import Transformer  # noqa: E402
from model.checkpoint import TOKENIZER, find_checkpoint, load_model, save_model_checkpoint  # noqa: E402
from Tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from train.config import load_config  # noqa: E402

COLUMNS = ["impl", "batch", "prefill_tok_s", "decode_tok_s", "vs_hf", "cpu_decode_tok_s", "cpu_vs_hf",
           "decode_ms_per_step", "total_s", "gb_s", "note"]
DEFAULTS = "run_inference defaults"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Benchmark flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory or training run directory")
    src.add_argument("--config", help="YAML config: random weights of its model section")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    p.add_argument("--no-cache-repeats", type=int, default=1,
                   help="timed runs for the slow no-kv-cache case (0 skips it)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="auto: try it, report a failure as a note")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    p.add_argument("--no-defaults", action="store_true", help="skip the run_inference defaults row")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/decode-<device>.json)")
    return p.parse_args(argv)


# ---- models -----------------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Transformer:
    """The checkpoint's model, or a seeded random model of the config's model section; on CPU with the weight
    layout Generator.from_checkpoint gives it (decode_layout), so our rows decode as the CLI does."""
    if args.checkpoint:
        model = load_model(args.checkpoint, device, dtype)[0]
    else:
        torch.manual_seed(0)
        model = Transformer(load_config(args.config).model).to(device=device, dtype=dtype).eval()
    if device.type == "cpu":
        decode_layout(model)
    return model


def load_hf_peer(model: Transformer, device: torch.device, dtype: torch.dtype, tmp: Path):
    """The same weights through scripts/convert_hf.py's export, loaded by transformers."""
    from transformers import AutoModelForCausalLM

    from scripts.convert_hf import export_checkpoint

    ckpt = save_model_checkpoint(tmp / "ckpt", model)
    hf_dir = export_checkpoint(ckpt, tmp / "hf", dtype="float32")
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()


def cli_checkpoint(args: argparse.Namespace, model: Transformer, tmp: Path) -> Path:
    """A checkpoint directory with a tokenizer for the run_inference defaults row: --checkpoint's own, or the
    random weights saved with a tokenizer of the model's vocabulary trained on the built-in corpus."""
    if args.checkpoint:
        return find_checkpoint(args.checkpoint)  # a run directory's latest checkpoint, as the CLI takes it
    tokenizer = tmp / "tokenizer"
    train_tokenizer(iter_documents(["builtin:python-stdlib"]), model.cfg.vocab_size, tokenizer, sample_mb=1,
                    progress=False)
    return save_model_checkpoint(tmp / "cli-ckpt", model, tokenizer)


# ---- runs -------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(model: Transformer, use_cache: bool, step: DecodeStep | None, cache_len: int) -> Callable:
    """run(tokens, n) -> (B, n) new tokens, greedy, through our decode loop."""

    def run(tokens: torch.Tensor, n: int) -> torch.Tensor:
        B = tokens.shape[0]
        sampler = Sampler(SamplingParams(temperature=0.0), [[]] * B, model.cfg.vocab_size, tokens.device)
        if use_cache:
            cache = model.layers[0].attention.kv_cache
            if cache is None or cache.k.shape[0] != B or cache.max_len != cache_len:
                model.setup_cache(B, cache_len)
        else:
            model.clear_cache()
        return torch.stack(list(generate_tokens(model, tokens, n, sampler, None, use_cache, step)), dim=1)

    return run


def cli_defaults(checkpoint: Path, prompt: str) -> Callable:
    """run(tokens, n) -> (1, made) new tokens of run_inference.py's default path, continuing `prompt` (the text of
    tokens) by at most n tokens: the Generator is loaded once, as the CLI does, from the parser's default flags."""
    args = inference_cli.build_parser().parse_args(["--checkpoint", str(checkpoint), "--prompt", prompt])
    gen = Generator.from_checkpoint(args.checkpoint, args.device, args.dtype, args.compile, not args.no_kv_cache)
    sampling = inference_cli.sampling_params(args)

    def run(tokens: torch.Tensor, n: int) -> torch.Tensor:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # the terminal is not timed
            done = inference_cli.print_stream(gen, gen.stream(prompt, n, sampling, args.stop, args.seed, args.bos))
        return torch.tensor([done.token_ids])

    return run


def hf(peer) -> Callable:
    """run(tokens, n) -> (B, n) new tokens from transformers' greedy generate()."""

    @torch.inference_mode()
    def run(tokens: torch.Tensor, n: int) -> torch.Tensor:
        out = peer.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False, max_new_tokens=n,
                            min_new_tokens=n, pad_token_id=0, eos_token_id=None)
        return out[:, tokens.shape[1]:]

    return run


@dataclass
class Variant:
    """One way of generating, with its best times so far."""

    name: str
    run: Callable  # run(tokens, n) -> (B, n) new tokens
    repeats: int
    kv_slots: int | None = None  # cache slots every decode step reads (static cache), None: the filled ones
    t1: float = float("inf")  # best time of a 1-token run (prefill)
    tn: float = float("inf")  # best time of an n-token run
    c1: float = float("inf")  # the same as process CPU time: what the run itself used, whatever else ran
    cn: float = float("inf")
    out: torch.Tensor | None = None
    note: str = ""


def timed(run: Callable, tokens: torch.Tensor, n: int) -> tuple[float, float, torch.Tensor]:
    """Wall time and process CPU time of one run, and its tokens."""
    sync(tokens.device)
    start, cpu = time.perf_counter(), time.process_time()
    out = run(tokens, n)
    sync(tokens.device)
    return time.perf_counter() - start, time.process_time() - cpu, out


def measure_all(variants: list[Variant], tokens: torch.Tensor, n: int) -> None:
    """Warm every variant up (allocations, compilation, CUDA graph capture), then time them in turns, so load from
    elsewhere on the machine falls on all of them alike; keep the best times."""
    for v in variants:
        print(f"... warm-up {v.name}, batch {tokens.shape[0]}", file=sys.stderr, flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v.run(tokens, min(n, 8))
        failed = [str(w.message)[:120] for w in caught if str(w.message).startswith(COMPILE_FAILED)]
        v.note = "; ".join([v.note, *failed] if v.note else failed)
    for r in range(max(v.repeats for v in variants)):
        for v in (v for v in variants if r < v.repeats):
            print(f"... run {r + 1}/{v.repeats} {v.name}, batch {tokens.shape[0]}", file=sys.stderr, flush=True)
            t1, c1, _ = timed(v.run, tokens, 1)
            tn, cn, v.out = timed(v.run, tokens, n)
            v.t1, v.tn, v.c1, v.cn = min(v.t1, t1), min(v.tn, tn), min(v.c1, c1), min(v.cn, cn)


def decode_bytes(model: Transformer, batch: int, prompt_len: int, new_tokens: int, kv_slots: int | None) -> int:
    """Bytes read by the N - 1 decode steps: every weight (the embedding table only through the head) plus the
    KV-cache slots attention reads (the filled ones, or all kv_slots for the static compiled step)."""
    cfg = model.cfg
    size = model.output.weight.element_size()
    weights = sum(p.numel() for p in model.parameters())
    if not cfg.tie_embeddings:
        weights -= model.tok_embeddings.weight.numel()  # a lookup reads B rows, not the table
    per_slot = 2 * cfg.n_layers * batch * cfg.kv_heads * cfg.head_dim * size  # K and V, every layer
    slots = sum(kv_slots or prompt_len + i + 1 for i in range(new_tokens - 1))
    return (new_tokens - 1) * weights * size + slots * per_slot


def copy_bandwidth(device: torch.device) -> float:
    """Measured device-memory bandwidth in GB/s (read + write of a 1 GiB copy): the practical bound."""
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best / 1e9


def row(v: Variant, tokens: torch.Tensor) -> dict:
    """One table row: prefill from the 1-token run, decode from the difference to the n-token run (n: the tokens
    it made)."""
    B, T = tokens.shape
    n = v.out.shape[1]
    decode = max(v.tn - v.t1, 1e-9)
    r = {"impl": v.name, "batch": B, "prefill_tok_s": B * T / v.t1, "decode_tok_s": B * (n - 1) / decode,
         "decode_ms_per_step": 1e3 * decode / (n - 1), "total_s": v.tn, "note": v.note}
    if tokens.device.type == "cpu":  # on a GPU the host's CPU time says little about the decode
        r["cpu_decode_tok_s"] = B * (n - 1) / max(v.cn - v.c1, 1e-9)
    return r


# ---- main -------------------------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict:
    """Run every variant at every batch size; return the JSON payload."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = build_model(args, device, dtype)
    if args.prompt_len + args.new_tokens > model.cfg.max_seq_len:
        raise UserError(f"--prompt-len + --new-tokens exceeds the model's max_seq_len ({model.cfg.max_seq_len})")
    T, N = args.prompt_len, args.new_tokens
    tmp = tempfile.TemporaryDirectory()
    peer = None if args.no_hf else load_hf_peer(model, device, dtype, Path(tmp.name))
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None

    load_before = os.getloadavg()  # other jobs on the machine: see the cpu_ columns
    compiled = DecodeStep(compile=True)
    defaults = None
    if not args.no_defaults and 1 in args.batch_sizes:
        ckpt = cli_checkpoint(args, model, Path(tmp.name))
        prompt_ids = torch.randint(0, load_tokenizer(ckpt / TOKENIZER).vocab_size, (T,),
                                   generator=torch.Generator().manual_seed(0))
        tokenizer = load_tokenizer(ckpt / TOKENIZER)
        prompt = tokenizer.decode(prompt_ids.tolist())
        defaults = cli_defaults(ckpt, prompt)
        defaults_note = f"sampled (temperature 0.8), text streamed; prompt {len(tokenizer.encode(prompt))} tokens"
    rows = []
    for B in args.batch_sizes:
        variants = [Variant("ours kv-cache", ours(model, True, DecodeStep(), T + N), args.repeats)]
        if args.no_cache_repeats > 0:
            variants.append(Variant("ours no-kv-cache", ours(model, False, None, T + N), args.no_cache_repeats))
        if args.compile != "off":
            S = model.cfg.max_seq_len
            variants.append(Variant("ours kv-cache+compile", ours(model, True, compiled, S), args.repeats, S))
        if peer is not None:
            variants.append(Variant("hf generate", hf(peer), args.repeats))
        if defaults is not None and B == 1:
            variants.append(Variant(DEFAULTS, defaults, args.repeats, note=defaults_note))
        tokens = torch.randint(0, model.cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
        tokens = tokens.expand(B, T).contiguous().to(device)
        measure_all(variants, tokens, N)
        for v in variants:
            r = row(v, tokens)
            if v.name.endswith("compile") and not compiled.compile:
                r["note"] = "compile failed, ran eagerly: " + r["note"]
            if v.name != DEFAULTS and not torch.equal(v.out, variants[0].out):
                r["note"] = (r["note"] + " tokens differ from ours kv-cache").strip()
            if bandwidth and not v.name.startswith("hf"):
                decode_s = B * (N - 1) / r["decode_tok_s"]
                r["gb_s"] = decode_bytes(model, B, T, N, v.kv_slots) / decode_s / 1e9
            rows.append(r)
        hf_row = next((r for r in rows if r["batch"] == B and r["impl"] == "hf generate"), None)
        for r in (r for r in rows if r["batch"] == B and hf_row):
            r["vs_hf"] = r["decode_tok_s"] / hf_row["decode_tok_s"]
            if "cpu_decode_tok_s" in r:
                r["cpu_vs_hf"] = r["cpu_decode_tok_s"] / hf_row["cpu_decode_tok_s"]
    tmp.cleanup()
    return {
        "benchmark": "decode",
        "env": {**environment(str(device)), "dtype": str(dtype).removeprefix("torch.")},
        "settings": {"source": args.checkpoint or args.config, "prompt_len": T, "new_tokens": N,
                     "batch_sizes": args.batch_sizes, "repeats": args.repeats, "params": model.num_params(),
                     "copy_bandwidth_gb_s": bandwidth, "load_average_1_5_15_min": {"start": load_before,
                                                                                   "end": os.getloadavg()}},
        "rows": rows,
        "summary": summarize(rows),
    }


def summarize(rows: list[dict]) -> dict:
    """Decode-speed ratios of the cached loop against recomputation and against transformers, and of the CLI's
    default path against transformers, per batch size."""
    out = {}
    for B in sorted({r["batch"] for r in rows}):
        speed = {r["impl"]: r["decode_tok_s"] for r in rows if r["batch"] == B}
        base = speed["ours kv-cache"]
        for other in ("ours no-kv-cache", "hf generate", "ours kv-cache+compile"):
            if other in speed:
                out[f"batch {B}: ours kv-cache / {other}"] = base / speed[other]
        if DEFAULTS in speed and "hf generate" in speed:
            out[f"batch {B}: {DEFAULTS} / hf generate"] = speed[DEFAULTS] / speed["hf generate"]
        cpu = {r["impl"]: r["cpu_decode_tok_s"] for r in rows if r["batch"] == B and "cpu_decode_tok_s" in r}
        for ours_name in ("ours kv-cache", DEFAULTS):
            if ours_name in cpu and "hf generate" in cpu:
                out[f"batch {B}: {ours_name} / hf generate, CPU time"] = cpu[ours_name] / cpu["hf generate"]
    return out


def report(args: argparse.Namespace) -> None:
    """Run, print the table and summary, write JSON."""
    payload = benchmark(args)
    env = payload["env"]
    print(f"decode benchmark: {payload['settings']['source']}, {env['device']} {env.get('gpu', '')} {env['dtype']}, "
          f"torch {env['torch']}, {env['torch_threads']} threads, commit {env['commit']}")
    load = payload["settings"]["load_average_1_5_15_min"]
    print(f"prompt {payload['settings']['prompt_len']} tokens, {payload['settings']['new_tokens']} new tokens, greedy; "
          f"load average {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end ({os.cpu_count()} CPUs)")
    print_table(payload["rows"], COLUMNS if payload["settings"]["copy_bandwidth_gb_s"] else
                [c for c in COLUMNS if c != "gb_s"])
    if payload["settings"]["copy_bandwidth_gb_s"]:
        print(f"device copy bandwidth (bound): {payload['settings']['copy_bandwidth_gb_s']:.0f} GB/s")
    for key, ratio in payload["summary"].items():
        print(f"{key}: {ratio:.2f}x")
    device = env["device"].split(":")[0]
    path = write_result(f"decode-{device}", payload, args.out)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: report(args))


if __name__ == "__main__":
    sys.exit(main())
