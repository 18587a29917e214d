"""Peak memory and time of the training loss (forward + backward) for a 128k vocabulary: the full logits
against the chunked cross-entropy of model/loss.py.

    python benchmarks/loss_memory.py                        # CPU: 2048 tokens, dim 256, vocab 128256, fp32
    python benchmarks/loss_memory.py --device cuda --dtype bf16 --tokens 32768 --dim 2048   # configs/1b.yaml

The width is reduced on CPU (the logits, tokens x vocab, are what differs between the two; the hidden states
and head weight are the same for both). Each variant runs in its own process. On CPU the peak is the
process's resident-set high-water mark (getrusage; Python's tracemalloc does not see torch's allocations)
above the mark with the inputs allocated; on CUDA, torch.cuda.max_memory_allocated above the inputs. Time is
the best of --repeats runs. Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import environment, print_table, write_result  # noqa: E402
from model.loss import chunked_cross_entropy  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = {
    "full logits": lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t),
    "chunked": lambda h, w, t: chunked_cross_entropy(h, w, t),
}


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, args: argparse.Namespace) -> dict:
    """Run one variant in this process: peak memory of its first forward + backward, then its best time."""
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(args.tokens, args.dim, generator=gen, device=device).requires_grad_()
    weight = (0.02 * torch.randn(args.vocab, args.dim, generator=gen, device=device)).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen, device=device)
    fn = VARIANTS[variant]
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    def step() -> float:
        with autocast:
            loss = fn(hidden, weight, targets)
        loss.backward()
        hidden.grad = weight.grad = None
        return loss.item()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_peak_mib()
    loss = step()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_peak_mib()) - base
    best = float("inf")
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return {"variant": variant, "peak_mib": peak, "seconds": best, "loss": loss}


def main(argv: list[str] | None = None) -> None:
    """Measure each variant in a fresh process, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype of the head matmul")
    p.add_argument("--tokens", type=int, default=2048, help="rows: micro batch x sequence length")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    passed = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("out", "child")]
    rows = []
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, *passed, "--child", variant], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full_logits_mib = args.tokens * args.vocab * 4 / 2**20
    for row in rows:
        row["vs_full_logits_fp32"] = row["peak_mib"] / full_logits_mib
    print(f"{args.tokens} tokens x vocab {args.vocab}: the fp32 logits alone are {full_logits_mib:,.0f} MiB")
    print_table(rows, ["variant", "peak_mib", "vs_full_logits_fp32", "seconds", "loss"])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
    payload = {"benchmark": "loss_memory", "env": environment(args.device), "settings": settings,
               "full_logits_fp32_mib": full_logits_mib, "rows": rows}
    print(f"wrote {write_result(f'loss_memory-{torch.device(args.device).type}', payload, args.out)}")


if __name__ == "__main__":
    main()
