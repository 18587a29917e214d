"""Grouped-query attention three ways: keys/values copied per query head (repeat_kv), SDPA's own GQA
(`enable_gqa=True`), and, with a KV cache, the query heads folded onto their shared kv head.

    python benchmarks/gqa_attention.py                       # CPU, fp32, the shapes below
    python benchmarks/gqa_attention.py --device cuda --dtype bf16

Cases (one attention call, all heads; the projections are left out since they are the same for all):
    train    forward + backward over T tokens, causal (the training path)
    prefill  T queries against a KV cache of kv_len slots with an explicit (T, kv_len) mask
    decode   one query per sequence against kv_len cached keys (the generation step)
Each figure is the best of --repeats runs of --iters calls; the variants take turns, so load from elsewhere
falls on all of them alike. Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import environment, print_table, write_result  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, D) -> (B, n_kv * n_rep, T, D), the copy the GQA path avoids."""
    B, n_kv, T, D = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, D).reshape(B, n_kv * n_rep, T, D)


def folded(q, k, v, mask):
    """The n_rep query heads of kv head g as n_rep * T queries of head g (mask rows repeated to match)."""
    B, H, T, D = q.shape
    n_kv = k.shape[1]
    if T > 1:
        mask = mask.repeat(H // n_kv, 1)
    y = F.scaled_dot_product_attention(q.reshape(B, n_kv, H // n_kv * T, D), k, v, attn_mask=mask)
    return y.view(B, H, T, D)


def timed(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call of fn, over `iters` calls."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def cases(args, device, dtype) -> dict[str, dict[str, Callable[[], object]]]:
    """case -> variant -> a zero-argument call to time."""
    B, H, G, D, T, L = args.batch, args.n_heads, args.n_kv_heads, args.head_dim, args.seq_len, args.kv_len
    n_rep = H // G
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype).requires_grad_(grad)

    q, k, v = rand(B, H, T, D, grad=True), rand(B, G, T, D, grad=True), rand(B, G, T, D, grad=True)
    dy = rand(B, H, T, D)

    def train(gqa: bool):
        def run():
            if gqa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                y = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True)
            torch.autograd.grad(y, (q, k, v), dy)
        return run

    ck, cv = rand(B, G, L, D), rand(B, G, L, D)
    out = {"train": {"repeat_kv": train(False), "enable_gqa": train(True)}}
    for name, t in (("prefill", T), ("decode", 1)):
        cq = rand(B, H, t, D)
        pos = torch.arange(L - t, L, device=device)
        mask = torch.arange(L, device=device)[None, :] <= pos[:, None]  # (t, L)
        out[name] = {
            "repeat_kv": lambda cq=cq, mask=mask: F.scaled_dot_product_attention(
                cq, repeat_kv(ck, n_rep), repeat_kv(cv, n_rep), attn_mask=mask),
            "enable_gqa": lambda cq=cq, mask=mask: F.scaled_dot_product_attention(
                cq, ck, cv, attn_mask=mask, enable_gqa=True),
            "fold_heads": lambda cq=cq, mask=mask: folded(cq, ck, cv, mask),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the cases, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256, help="tokens for train and prefill")
    p.add_argument("--kv-len", type=int, default=1024, help="cached positions for prefill and decode")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    rows = []
    for case, variants in cases(args, device, dtype).items():
        for fn in variants.values():  # warm-up
            fn()
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.repeats):
            for name, fn in variants.items():
                best[name] = min(best[name], timed(fn, args.iters))
        base = best["repeat_kv"]
        for name, seconds in best.items():
            rows.append({"case": case, "impl": name, "ms": seconds * 1e3, "vs_repeat_kv": base / seconds})
    print_table(rows, ["case", "impl", "ms", "vs_repeat_kv"])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "device", "dtype")}
    env = {**environment(args.device), "dtype": args.dtype}
    path = write_result(f"gqa_attention-{device.type}", {"benchmark": "gqa_attention", "env": env,
                                                         "settings": settings, "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
