"""Training throughput: python benchmarks/train_throughput.py --config configs/tiny.yaml [key=value ...]

Runs the real optimizer step (train.trainer.StepRunner: forward, backward, clipping, AdamW) on random tokens
after a warmup, and reports tokens/s, step time, peak memory and (on known GPUs) MFU. Prints a table and
writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import torch
from common import environment, print_table, write_result

from model import Transformer
from train.config import load_config
from train.metrics import resolve_peak_flops
from train.optim import build_optimizer
from train.parallel import World, apply_parallelism, pick_device, resolve_precision
from train.trainer import StepRunner


def measure(cfg, steps: int, warmup: int) -> dict:
    world = World()
    device = pick_device(cfg.train.device, world)
    precision = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.train.seed)
    with torch.device("meta"):
        raw = Transformer(cfg.model)
    raw.to_empty(device=device)
    raw.init_weights()
    model = apply_parallelism(raw, cfg, device, world, precision)
    optimizer = build_optimizer(raw, cfg.optim, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    runner = StepRunner(model, optimizer, scaler, device, precision, precision, cfg.optim.grad_clip, world)
    accum = cfg.grad_accum_steps()
    t = cfg.train
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_len + 1), generator=gen)
        return x[:, :-1].pin_memory() if device.type == "cuda" else x[:, :-1], x[:, 1:]

    times = []
    for i in range(warmup + steps):
        batches = [batch() for _ in range(accum)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        runner(batches)  # .item() inside synchronizes
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--out", default=None, help="JSON path (default: under benchmarks/results/)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = measure(cfg, args.steps, args.warmup)
    row = {"config": args.config, **result}
    print_table([row], ["config", "device", "precision", "compile", "params_M", "batch_tokens", "step_time_s",
                        "tokens_per_sec", "peak_mem_GiB", "mfu"])
    name = f"train_throughput-{cfg.train.out_dir.split('/')[-1]}-{result['device'].replace(':', '')}"
    path = write_result(name, {"benchmark": "train_throughput", "config": args.config, "overrides": args.overrides,
                               "result": result, "env": environment(result["device"])}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
