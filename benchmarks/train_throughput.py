"""Training throughput: python benchmarks/train_throughput.py --config configs/tiny.yaml [key=value ...]

Builds the model exactly as training does (train.engine.build_engine: meta device, init, compile, parallelism,
optimizer) and times the real optimizer step (Engine.train_step: forward, backward, clipping, AdamW) on random
tokens after a warmup, at the config's own settings (precision, compile). Beside it, the same weights as
transformers' LlamaForCausalLM (exported with scripts/convert_hf.py) take the same step (forward with labels,
backward, clipping, torch AdamW with the same settings), once in fp32 and once under bf16 autocast
(--peer-precisions). All take turns, run by run, so load from elsewhere falls on each alike. The table shows the
median step of each, its first step (compilation when on), how many times faster ours is than each peer row
(ours_speedup), the achieved FLOP/s and its share of a matmul peak measured on the spot (a large fp32 or bf16
GEMM), and peak memory. It also times the step's matmuls and attention alone at its shapes (matmul_floor):
floor_ratio is each step over that floor, and peer step / floor bounds what any implementation can gain in fp32.
JSON goes under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import torch
from common import environment, print_table, write_result

from core import cli
from core.device import autocast
from model.checkpoint import save_model_checkpoint
from train.config import Config, load_config
from train.engine import build_engine
from train.metrics import resolve_peak_flops
from train.parallel import World, resolve_plan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a step's matmuls run in under `precision` (autocast's, or fp32)."""
    return torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32


def matmul_peak(device: torch.device, precision: str, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n x n x n matmuls in the run's precision: what this device reaches here
    (n = 2048 on a CPU; 8192 on a GPU, large enough to fill it)."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = compute_dtype(precision)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up the kernel choice
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def matmul_floor(cfg: Config, model: torch.nn.Module, device: torch.device, precision: str, repeats: int = 3) -> float:
    """Seconds of the step's unavoidable work alone, measured here: for every nn.Linear of the model its three
    matmuls (forward, input gradient, weight gradient) at the step's token count, plus one attention forward
    and backward (SDPA, causal, grouped-query) per layer, in the step's compute dtype (fp32, or autocast's bf16 or
    fp16); best of `repeats`. No norm, activation, loss, optimizer or framework code. An implementation doing
    this math with the same kernels cannot be faster, so a peer's step / floor, for a peer in the same precision,
    bounds the speedup it can have over that peer (only other kernels, another precision or less arithmetic
    could go further)."""
    t, m = cfg.train, cfg.model
    tokens = t.micro_batch_size * t.seq_len
    dtype = compute_dtype(precision)
    mats = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n_in, n_out = module.in_features, module.out_features
            mats.append((torch.randn(tokens, n_in, device=device, dtype=dtype),
                         torch.randn(n_out, n_in, device=device, dtype=dtype),
                         torch.randn(tokens, n_out, device=device, dtype=dtype)))
    shape = (t.micro_batch_size, m.n_heads, t.seq_len, m.head_dim)
    q = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    kv_shape = (t.micro_batch_size, m.kv_heads, t.seq_len, m.head_dim)
    k = torch.randn(kv_shape, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(kv_shape, device=device, dtype=dtype, requires_grad=True)

    def work() -> None:
        for x, w, g in mats:
            x @ w.t()
            g @ w
            g.t() @ x
        for _ in range(m.n_layers):
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            y.backward(torch.ones_like(y))

    work()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best * cfg.grad_accum_steps()


def hf_peer(cfg: Config, engine, tmp: Path, precision: str):
    """The engine's initial weights as a transformers LlamaForCausalLM, with an AdamW of the same settings, and a
    step function doing what Engine.train_step does, under `precision` autocast (fp32 weights either way)."""
    from transformers import AutoModelForCausalLM

    from scripts.convert_hf import export_checkpoint

    ckpt = save_model_checkpoint(tmp / "ckpt", engine.raw_model)
    hf_dir = export_checkpoint(ckpt, tmp / "hf")
    device = engine.device
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).train()
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=o.lr, betas=(o.beta1, o.beta2),
                                  eps=o.eps, fused=device.type == "cuda")

    def step(micro_batches) -> None:
        n = len(micro_batches)
        for x, y in micro_batches:
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / n
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # synchronize, as Engine.train_step does

    return step


def measure(cfg: Config, steps: int, warmup: int, peer_precisions: list[str]) -> dict:
    plan = resolve_plan(cfg.train, World())
    device, precision = plan.device, plan.precision
    engine = build_engine(cfg, plan)
    raw = engine.raw_model
    t = cfg.train
    gen = torch.Generator().manual_seed(0)

    def batches():
        out = []
        for _ in range(cfg.grad_accum_steps()):
            x = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_len + 1), generator=gen)
            out.append((x[:, :-1], x[:, 1:]))  # as the real loader gives them (unpinned)
        return out

    peer = bool(peer_precisions)
    with tempfile.TemporaryDirectory(prefix="train-bench-") if peer else contextlib.nullcontext() as tmp:
        runners = {"ours": engine.train_step}
        for p in peer_precisions:
            runners[f"transformers {p}"] = hf_peer(cfg, engine, Path(tmp) / p, p)
        times: dict[str, list[float]] = {name: [] for name in runners}
        first: dict[str, float] = {}  # the first step: compilation (if on) and first-touch allocations
        for i in range(warmup + steps):
            for name, run in runners.items():  # turns, so outside load falls on both alike
                data = batches()
                sync(device)
                start = time.perf_counter()
                run(data)
                sync(device)
                if i == 0:
                    first[name] = time.perf_counter() - start
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
        if device.type == "cuda":  # ours and the peers together, before the floor's buffers below
            mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            mem_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        del run, data  # `run` still holds the last peer's step (its model and optimizer state)
        runners.clear()  # the peers' models and optimizer states: free their memory for the floor
        if device.type == "cuda":
            torch.cuda.empty_cache()
    tokens = t.batch_size * t.seq_len
    flops_per_token = raw.flops_per_token(t.seq_len)
    measured_peak = matmul_peak(device, precision)
    floor = matmul_floor(cfg, raw, device, precision)
    table_peak = resolve_peak_flops(cfg, device)
    rows = []
    for name, samples in times.items():
        step_time = statistics.median(samples)
        tps = tokens / step_time
        rows.append({
            "impl": name,
            "device": str(device),
            "precision": precision if name == "ours" else name.split()[1],
            "compile": t.compile if name == "ours" else False,
            "params_M": raw.num_params() / 1e6,
            "batch_tokens": tokens,
            "step_time_s": step_time,
            "step_time_mean_s": statistics.fmean(samples),
            "first_step_s": first[name],
            "floor_ratio": step_time / floor,
            "tokens_per_sec": tps,
            "tflops": tps * flops_per_token / 1e12,
            "of_matmul_peak": tps * flops_per_token / measured_peak,
            "mfu": tps * flops_per_token / table_peak if table_peak else None,
        })
    for row in rows[1:]:  # ours is this many times faster than each peer row
        row["ours_speedup"] = row["step_time_s"] / rows[0]["step_time_s"]
    return {"rows": rows, "matmul_peak_tflops": measured_peak / 1e12, "matmul_floor_s": floor, "peak_mem_GiB": mem_gb,
            "peak_mem_kind": "cuda max allocated, all rows" if device.type == "cuda" else "process max RSS, all rows"}


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (per implementation)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    parser.add_argument("--peer-precisions", default="fp32,bf16",
                        help="transformers peer rows: comma-separated autocast precisions (fp32, bf16, fp16)")
    parser.add_argument("--out", default=None, help="JSON path (default: under benchmarks/results/)")
    args = parser.parse_args(argv)
    return cli.run(lambda: report(args))


def report(args: argparse.Namespace) -> None:
    """Measure, print the table, write JSON."""
    cfg = load_config(args.config, args.overrides)
    peers = [] if args.no_hf else [p for p in args.peer_precisions.split(",") if p]
    result = measure(cfg, args.steps, args.warmup, peers)
    env = environment(result["rows"][0]["device"])
    print(f"train step: {args.config} {' '.join(args.overrides)}; torch {env['torch']}, {env['torch_threads']} "
          f"threads, commit {env['commit']}; matmul peak measured here {result['matmul_peak_tflops']:.3f} TFLOP/s")
    print_table(result["rows"], ["impl", "device", "precision", "compile", "params_M", "batch_tokens",
                                 "step_time_s", "first_step_s", "tokens_per_sec", "tflops", "of_matmul_peak",
                                 "floor_ratio", "ours_speedup"])
    floor = result["matmul_floor_s"]
    precision = result["rows"][0]["precision"]
    print(f"{precision} matmul + attention floor of this step, measured here: {floor:.3f} s; the most any "
          f"implementation can beat each peer by in {precision}: " + (", ".join(
              f"{r['impl']} {r['step_time_s'] / floor:.2f}x" for r in result["rows"][1:]
              if r["precision"] == precision) or "(no peer row in that precision)"))
    print(f"peak memory ({result['peak_mem_kind']}): {result['peak_mem_GiB']:.2f} GiB")
    device = result["rows"][0]["device"].replace(":", "")
    name = f"train_throughput-{Path(cfg.train.out_dir).name}-{device}"
    path = write_result(name, {"benchmark": "train_throughput", "config": args.config, "overrides": args.overrides,
                               "result": result, "env": env}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
