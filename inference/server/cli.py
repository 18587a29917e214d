"""Command line of run_server.py: load a checkpoint, start the engine, serve the OpenAI-compatible API.

Bad input (a missing checkpoint, a bad flag value) prints one `error: ...` line and exits with code 2
(core.cli.run); Ctrl-C stops the server gracefully.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import cli
from core.errors import UserError
from inference.generator import Generator
from inference.server.app import Server, create_app
from inference.server.body_limit import DEFAULT_MAX_BODY_BYTES
from inference.server.engine import Engine


class ServerError(UserError):
    """A bad server flag value."""


def build_parser() -> argparse.ArgumentParser:
    """The run_server.py flags."""
    p = cli.ArgumentParser(prog="run_server.py", description="Serve a checkpoint behind an OpenAI-compatible HTTP API.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a training run's out_dir (latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--model-name", help="model id clients must send (default: the checkpoint folder's name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (KV cache slots)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; beyond, 503")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted; a larger one is answered 413 before it is read")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    return p


def build_server(args: argparse.Namespace) -> Server:
    """Load the checkpoint and start the engine (its scheduler thread) behind a Server."""
    if args.max_batch < 1:
        raise ServerError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 0:
        raise ServerError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_body_bytes < 1:
        raise ServerError(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    if not 1 <= args.port < 65536:
        raise ServerError(f"--port must be in [1, 65535], got {args.port}")
    gen = Generator.from_checkpoint(args.checkpoint, args.device, args.dtype)
    engine = Engine(gen.model, gen.tokenizer, args.max_batch, args.max_queue).start()
    name = args.model_name or Path(args.checkpoint).resolve().name
    return Server(engine, name, args.api_key, args.max_body_bytes)


def serve(args: argparse.Namespace) -> None:
    """Everything run_server.py does, after parsing: serve until Ctrl-C."""
    import uvicorn  # here, so --help and bad flags answer without loading the web stack

    server = build_server(args)
    print(f"serving {server.model_name!r} on http://{args.host}:{args.port} (chat page at /)", file=sys.stderr)
    try:
        # uvicorn shuts down gracefully on SIGINT / SIGTERM; depending on its version it then raises the signal
        # again, which core.cli.run reports as an interrupt (exit 130).
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")
    finally:
        server.engine.close()


def main(argv: list[str] | None = None) -> int:
    """Parse and serve; user errors are one line and exit code 2 (core.cli.run)."""
    args = build_parser().parse_args(argv)
    return cli.run(lambda: serve(args))
