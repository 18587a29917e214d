"""Plot a run's metrics: python scripts/plot_logs.py OUT_DIR [--out DIR]

Writes loss.png (train and validation loss), lr.png, grad_norm.png and throughput.png next to metrics.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import cli  # noqa: E402
from core.errors import DataError  # noqa: E402
from core.paths import check_dir_path  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl (skipped-step records left out)."""
    if not path.is_file():
        raise DataError(f"no metrics file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not a metrics log: byte {e.start} is not UTF-8 text") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {i}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{path}, line {i}: a metrics record needs an integer 'step'")
        records.append(record)
    if not records:
        raise DataError(f"{path} holds no metrics records yet (the run logs every train.log_interval steps)")
    return [r for r in records if not r.get("skipped")]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot(out_dir: Path, dest: Path | None = None) -> list[Path]:
    """Write the PNG plots and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if dest is not None:
        check_dir_path(dest, "--out", DataError)
    records = read_metrics(out_dir / "metrics.jsonl")
    dest = dest or out_dir
    dest.mkdir(parents=True, exist_ok=True)
    panels = {
        "loss.png": ([("loss", "train"), ("val_loss", "validation")], "loss (nats/token)", False),
        "lr.png": ([("lr", "learning rate")], "learning rate", False),
        "grad_norm.png": ([("grad_norm", "grad norm")], "global grad norm", True),
        "throughput.png": ([("tokens_per_sec", "tokens/s")], "tokens/s", False),
    }
    written = []
    for name, (keys, ylabel, logy) in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in keys:
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if key == "val_loss" else None, markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
        ax.set_title(f"{out_dir.name}: {ylabel}")
        fig.tight_layout()
        fig.savefig(dest / name, dpi=110)
        plt.close(fig)
        written.append(dest / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Write the plots of one run; bad input is one `error:` line and exit code 2."""
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default: OUT_DIR)")
    args = parser.parse_args(argv)

    def run() -> None:
        for path in plot(args.out_dir, args.out):
            print(path)

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
