"""Training throughput: python benchmarks/train_throughput.py --config configs/tiny.yaml [key=value ...]

Builds the model exactly as training does (train.engine.build_engine: meta device, init, compile, parallelism,
optimizer) and runs the real optimizer step (Engine.train_step: forward, backward, clipping, AdamW) on random
tokens after a warmup, and reports tokens/s, step time, peak memory and (on known GPUs) MFU. Prints a table and
writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import torch
from common import environment, print_table, write_result

from core import cli
from train.config import load_config
from train.engine import build_engine
from train.metrics import resolve_peak_flops
from train.parallel import World, resolve_plan


def measure(cfg, steps: int, warmup: int) -> dict:
    plan = resolve_plan(cfg.train, World())
    device, precision = plan.device, plan.precision
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine = build_engine(cfg, plan)
    raw = engine.raw_model
    accum = cfg.grad_accum_steps()
    t = cfg.train
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_len + 1), generator=gen)
        return x[:, :-1], x[:, 1:]  # as the real loader gives them (unpinned)

    times = []
    for i in range(warmup + steps):
        batches = [batch() for _ in range(accum)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.train_step(batches)  # .item() inside synchronizes
        if i >= warmup:
            times.append(time.perf_counter() - start)
    tokens = t.batch_size * t.seq_len
    step_time = statistics.median(times)
    tps = tokens / step_time
    peak = resolve_peak_flops(cfg, device)
    if device.type == "cuda":
        mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mem_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    return {
        "device": str(device),
        "precision": precision,
        "compile": t.compile,
        "params_M": raw.num_params() / 1e6,
        "batch_tokens": tokens,
        "step_time_s": step_time,
        "step_time_mean_s": statistics.fmean(times),
        "tokens_per_sec": tps,
        "peak_mem_GiB": mem_gb,
        "peak_mem_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "mfu": tps * raw.flops_per_token(t.seq_len) / peak if peak else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--out", default=None, help="JSON path (default: under benchmarks/results/)")
    args = parser.parse_args(argv)
    return cli.run(lambda: report(args))


def report(args) -> None:
    """Measure, print the table, write JSON."""
    cfg = load_config(args.config, args.overrides)
    result = measure(cfg, args.steps, args.warmup)
    row = {"config": args.config, **result}
    print_table([row], ["config", "device", "precision", "compile", "params_M", "batch_tokens", "step_time_s",
                        "tokens_per_sec", "peak_mem_GiB", "mfu"])
    name = f"train_throughput-{cfg.train.out_dir.split('/')[-1]}-{result['device'].replace(':', '')}"
    path = write_result(name, {"benchmark": "train_throughput", "config": args.config, "overrides": args.overrides,
                               "result": result, "env": environment(result["device"])}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
