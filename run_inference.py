"""Generate text from a checkpoint: `python run_inference.py --checkpoint PATH --prompt TEXT` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import cli


def main() -> int:
    """Hand over to inference.cli, imported under cli.run so that a Ctrl-C while torch imports exits quietly."""
    def start() -> int:
        from inference.cli import main as generate

        return generate()

    return cli.run(start)


if __name__ == "__main__":
    cli.quiet_interrupts()
    sys.exit(main())
