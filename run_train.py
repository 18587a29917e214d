"""Train a model: python run_train.py --config configs/NAME.yaml [section.key=value ...]"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import cli

EXIT_GAVE_UP = 1  # training stopped itself after train.max_bad_steps non-finite steps


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, load and validate the config, train; returns the exit code."""
    return cli.run(lambda: _train(argv))


def _train(argv: list[str] | None) -> int:
    parser = cli.ArgumentParser(
        description="Train a Llama-style model from a YAML config.",
        epilog="Overrides use dotted keys typed as YAML, e.g. train.max_steps=200 optim.lr=3e-4 model.n_kv_heads=2",
    )
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)

    import logging
    import os

    from train.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from train.trainer import TrainingStopped, train

    try:
        result = train(cfg)
    except TrainingStopped as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_GAVE_UP
    if result.interrupted is not None:
        return 128 + result.interrupted
    return 0


if __name__ == "__main__":
    cli.quiet_interrupts()
    sys.exit(main())
