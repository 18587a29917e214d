"""Serve a checkpoint over an OpenAI-compatible API: `python run_server.py --checkpoint PATH` (see --help)."""

import sys
from pathlib import Path


def main() -> int:
    """Put the repo root on sys.path and hand over to inference.server.cli."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference.server.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
