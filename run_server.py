"""Serve a checkpoint over an OpenAI-compatible API: `python run_server.py --checkpoint PATH` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import cli


def main() -> int:
    """Hand over to inference.server.cli, imported under cli.run so that a Ctrl-C while torch imports exits
    quietly."""
    def start() -> int:
        from inference.server.cli import main as serve

        return serve()

    return cli.run(start)


if __name__ == "__main__":
    cli.quiet_interrupts()
    sys.exit(main())
