"""Serving speed: continuous batching against sequential serving, at 1, 4, 16 and 32 concurrent clients.

    python benchmarks/serve.py                                  # random weights of configs/tiny.yaml's model
    python benchmarks/serve.py --checkpoint out/tiny            # a trained checkpoint

The server is run_server.py in its own process (so the clients do not share its interpreter), once with
--max-batch 32 (continuous batching) and once with --max-batch 1 (sequential: one request at a time, the others
queued). Each of C clients streams --requests completions one after another (greedy, --max-tokens tokens, a
different prompt each). Reported per mode and C: total tokens/s (completion tokens over the wall time of the
level), p50/p95 time to first token, and p50/p95 per-token latency (the time between a stream's first and last
token over its tokens after the first). Without --checkpoint the model has random weights and the tokenizer is
trained on a small generated corpus at the config's vocabulary size: speed does not depend on what the weights
say. Prints a table and writes JSON (environment, settings, rows) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import environment, print_table, write_result  # noqa: E402
from model import Transformer  # noqa: E402
from model.checkpoint import save_model_checkpoint  # noqa: E402
from Tokenizer import train_tokenizer  # noqa: E402
from train.config import load_config  # noqa: E402

MODES = {"continuous": 32, "sequential": 1}  # mode -> --max-batch
COLUMNS = ["mode", "clients", "requests", "tokens", "tok_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms",
           "tpot_p95_ms"]
_rng = random.Random(0)
# Made-up words: enough distinct text for a tokenizer of the config's vocabulary size, trained in seconds.
WORDS = ["".join(_rng.choice(string.ascii_lowercase) for _ in range(_rng.randint(2, 8))) for _ in range(3000)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Benchmark flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml", help="YAML config: random weights of its model section")
    p.add_argument("--checkpoint", help="serve this checkpoint instead of random weights")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32], help="concurrency levels")
    p.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    p.add_argument("--prompt-words", type=int, default=24, help="words per prompt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/serve-<device>.json)")
    return p.parse_args(argv)


def random_checkpoint(config: str, tmp: Path) -> Path:
    """A seeded random model of the config's model section, with a tokenizer of its vocabulary size."""
    cfg = load_config(ROOT / config if not Path(config).is_absolute() else config)
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(300)) for _ in range(600)]
    train_tokenizer(corpus, cfg.model.vocab_size, tmp / "tokenizer", progress=False)
    torch.manual_seed(0)
    return save_model_checkpoint(tmp / "ckpt", Transformer(cfg.model), tmp / "tokenizer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, max_batch: int, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_server.py"), "--checkpoint", str(ckpt), "--port", str(port),
         "--model-name", "bench", "--max-batch", str(max_batch), "--max-queue", "256", "--device", args.device,
         "--dtype", args.dtype],
        stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 300 s") from None
            time.sleep(0.2)


async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    """Stream one completion; time to first token, per-token latency, completion tokens."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    return {"ttft": first - start, "tpot": (last - first) / max(tokens - 1, 1), "tokens": tokens}


async def level(url: str, clients: int, args: argparse.Namespace, rng: random.Random) -> tuple[list[dict], float]:
    """C clients, each streaming args.requests prompts in turn; the requests' stats and the wall time."""

    async def client_loop(client: httpx.AsyncClient) -> list[dict]:
        prompts = [" ".join(rng.choice(WORDS) for _ in range(args.prompt_words)) for _ in range(args.requests)]
        return [await one_request(client, p, args.max_tokens) for p in prompts]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return [r for rs in results for r in rs], wall


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(mode: str, clients: int, stats: list[dict], wall: float) -> dict:
    tokens = sum(s["tokens"] for s in stats)
    ttft, tpot = [s["ttft"] * 1e3 for s in stats], [s["tpot"] * 1e3 for s in stats]
    return {"mode": mode, "clients": clients, "requests": len(stats), "tokens": tokens, "tok_s": tokens / wall,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p95_ms": percentile(ttft, 95),
            "tpot_p50_ms": percentile(tpot, 50), "tpot_p95_ms": percentile(tpot, 95), "wall_s": wall}


def benchmark(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(args.config, Path(tmp))
        for mode, max_batch in MODES.items():
            proc, url = start_server(ckpt, max_batch, args)
            try:
                rng = random.Random(1)  # both modes get the same prompts
                asyncio.run(level(url, 2, argparse.Namespace(**{**vars(args), "requests": 1}), random.Random(9)))
                for clients in args.clients:
                    stats, wall = asyncio.run(level(url, clients, args, rng))
                    rows.append(summarize(mode, clients, stats, wall))
                    print(f"  {mode:<10} {clients:>3} clients: {rows[-1]['tok_s']:.0f} tokens/s", file=sys.stderr)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    speedups = {}
    for clients in args.clients:
        by_mode = {r["mode"]: r["tok_s"] for r in rows if r["clients"] == clients}
        speedups[f"{clients} clients: continuous / sequential tokens/s"] = by_mode["continuous"] / by_mode["sequential"]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["source"] = args.checkpoint or f"random weights of {args.config}"
    env = environment(args.device)
    env["dtype"] = args.dtype
    env["load_average_1m"] = os.getloadavg()[0]  # other work on the machine skews every figure
    return {"env": env, "settings": settings, "rows": rows, "summary": speedups}


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and the speedups, write JSON."""
    args = parse_args(argv)
    payload = benchmark(args)
    env, settings = payload["env"], payload["settings"]
    print(f"serving benchmark: {settings['source']}, {env['device']} {env.get('gpu', '')}, torch {env['torch']}, "
          f"{env['cpu_count']} CPUs, commit {env['commit']}")
    print(f"{settings['requests']} requests per client, {settings['max_tokens']} greedy tokens each, "
          f"prompts of {settings['prompt_words']} words; continuous = --max-batch 32, sequential = --max-batch 1")
    print_table(payload["rows"], COLUMNS)
    for key, ratio in payload["summary"].items():
        print(f"{key}: {ratio:.2f}x")
    path = write_result(f"serve-{args.device.split(':')[0]}", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
