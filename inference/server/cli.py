"""Command line of run_server.py: load a checkpoint, start the engine, serve the OpenAI-compatible API.

Bad input (a missing checkpoint, a bad flag value) prints one `error: ...` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from core.errors import UserError
from inference.generator import Generator
from inference.server.app import Server, create_app
from inference.server.engine import Engine


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one `error: ...` line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The run_server.py flags."""
    p = _Parser(prog="run_server.py", description="Serve a checkpoint behind an OpenAI-compatible HTTP API.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a training run's out_dir (latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--model-name", help="model id clients must send (default: the checkpoint folder's name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (KV cache slots)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; beyond, 503")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    return p


class ServerError(UserError):
    """A bad server flag value."""


def build_server(args: argparse.Namespace) -> Server:
    """Load the checkpoint and start the engine (its scheduler thread) behind a Server."""
    if args.max_batch < 1:
        raise ServerError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 0:
        raise ServerError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port < 65536:
        raise ServerError(f"--port must be in [0, 65535], got {args.port}")
    gen = Generator.from_checkpoint(args.checkpoint, args.device, args.dtype)
    engine = Engine(gen.model, gen.tokenizer, args.max_batch, args.max_queue).start()
    name = args.model_name or Path(args.checkpoint).resolve().name
    return Server(engine, name, args.api_key)


def main(argv: list[str] | None = None) -> int:
    """Parse, load, serve until Ctrl-C; user errors become one line and exit code 2."""
    import uvicorn  # here, so --help and bad flags answer without loading the web stack

    args = build_parser().parse_args(argv)
    try:
        server = build_server(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {server.model_name!r} on http://{args.host}:{args.port} (chat page at /)", file=sys.stderr)
    try:
        # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again: Ctrl-C ends up below.
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        return 130
    finally:
        server.engine.close()
    return 0
