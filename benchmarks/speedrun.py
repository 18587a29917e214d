"""Held-out bits per byte reached in a fixed training time: python benchmarks/speedrun.py --corpus FILE.txt

The corpus is one UTF-8 text file. Its last 10% of bytes (`--held-out`) is written to a held-out file that no side
trains on or builds a tokenizer from; the first 90% to a train file. Then, taking turns (`--repeats`):

- ours: `run_train.py --config configs/speedrun-cpu.yaml` (the real training code, `train.max_time` = `--seconds`)
  on the train file. Its data preparation (tokenizer training and tokenizing) runs once, before the clock, and its
  own validation split is cut from the train file. Checkpoints along the way give the curve.
- the peer: nanoGPT's documented CPU recipe (benchmarks/speedrun_peer.py) on the same train file, stopping at its
  2000 iterations or at `--seconds`, whichever comes first; weight snapshots give the curve.

Each snapshot is then scored on the held-out file (benchmarks/heldout.py: windows of each model's own context
that overlap by half, bits = nats / ln 2, per UTF-8 byte of the text predicted). The script prints the curve of
held-out bits per byte against training seconds for both, a table at equal times, and writes JSON to
benchmarks/results/speedrun.json with the load average around each run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import torch
from common import ROOT, environment, print_table, write_result
from heldout import bits_per_byte, heldout_nats
from speedrun_peer import score_peer, train_peer

import run_train
from core import cli
from core.errors import UserError
from data.setup import prepare_training_data
from model.checkpoint import load_model
from model.config import ModelConfig
from Tokenizer import load_tokenizer
from train.checkpoint import load_run_config, load_training_state
from train.config import load_config

DEFAULT_CONFIG = ROOT / "configs" / "speedrun-cpu.yaml"
TIMES = (15, 30, 45, 60, 75, 90)  # seconds at which the summary compares the two sides


def split_corpus(corpus: Path, held_out: float, work: Path) -> tuple[Path, str, str]:
    """Write work/train.txt (the first 1 - held_out of the bytes) and work/heldout.txt (the rest), cut at a
    character boundary; returns the train file's path and both texts."""
    raw = corpus.read_bytes()
    cut = int(len(raw) * (1 - held_out))
    while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:  # not inside a multi-byte character
        cut += 1
    try:
        train, heldout = raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--corpus {corpus} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(heldout) < 1000 or len(train) < 10_000:
        raise UserError(f"--corpus {corpus} is too small: {len(raw):,} bytes")
    work.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("heldout.txt", heldout)):
        path = work / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged: its dataset stays fresh
            path.write_text(text, encoding="utf-8")
    return work / "train.txt", train, heldout


def data_overrides(config: Path, train_file: Path, work: Path, overrides: list[str]) -> list[str]:
    """Our train file as the only source, and the dataset in the work directory under the name training would
    give it (it follows the data settings, so another vocabulary size prepares another dataset)."""
    sources = [f"data.sources=[{train_file}]"]
    default = Path(load_config(config, [*sources, *overrides]).data.dataset_dir)
    return [*sources, f"data.dataset_dir={work / default.name}"]


def run_ours(config: Path, train_file: Path, seconds: float, work: Path, tag: str, overrides: list[str],
             quiet: bool) -> list[dict]:
    """Train through run_train.py for `seconds`; returns one record per checkpoint (step, training seconds, path)."""
    out_dir = work / f"ours-{tag}"
    shutil.rmtree(out_dir, ignore_errors=True)
    argv = ["--config", str(config), *data_overrides(config, train_file, work, overrides), f"train.out_dir={out_dir}",
            f"train.max_time={seconds}", "train.resume=never", "log.progress=false", "log.tensorboard=false",
            *overrides]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        code = run_train.main(argv)
    if code != 0:
        raise RuntimeError(f"run_train.py {' '.join(argv)} exited {code}:\n{sink.getvalue()[-2000:]}")
    points = []
    for ckpt in sorted((out_dir / "checkpoints").glob("step_*")):
        state = load_training_state(ckpt)
        points.append({"step": int(state["step"]), "seconds": float(state["train_seconds"]),
                       "tokens": int(state["tokens_seen"]), "checkpoint": ckpt})
    return points


def prepare_ours(config: Path, train_file: Path, work: Path, overrides: list[str]) -> float:
    """Prepare our dataset (tokenizer + shards) before any clock starts; returns the seconds it took."""
    start = time.monotonic()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        cfg = load_config(config, [*data_overrides(config, train_file, work, overrides), *overrides])
        prepare_training_data(cfg.data, cfg.model.vocab_size, progress=False, info=lambda _: None)
    return time.monotonic() - start


def score_ours(ckpt: Path, heldout: str) -> tuple[float, int, dict]:
    """(nats, bytes, model facts) of the held-out text under a checkpoint: every token, the first after EOS (the
    document boundary training used)."""
    model, ckpt_dir = load_model(ckpt)
    tok = load_tokenizer(ckpt_dir / "tokenizer")
    ids = [tok.eos_id, *tok.encode(heldout)]
    cfg: ModelConfig = model.cfg
    context = load_run_config(ckpt_dir).train.seq_len  # the context it was trained with
    nats, _ = heldout_nats(lambda x: model(x), ids, context)
    return nats, len(heldout.encode("utf-8")), {"params_M": model.num_params() / 1e6, "vocab": cfg.vocab_size,
                                                  "context": context, "heldout_tokens": len(ids) - 1}


def at_time(curve: list[dict], t: float) -> float | None:
    """The bpb of the latest snapshot taken at or before t seconds."""
    done = [p["bpb"] for p in curve if p["seconds"] <= t + 1e-9]
    return done[-1] if done else None


def report(args: argparse.Namespace) -> None:
    """Split, train both sides in turns, score, print, write JSON."""
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise UserError(f"--corpus {corpus} is not a file")
    config = Path(args.config)
    work = Path(args.work_dir)
    train_file, train_text, heldout = split_corpus(corpus, args.held_out, work)
    vocab = sorted(set(train_text + heldout))  # nanoGPT builds its characters from the whole file
    prep_seconds = prepare_ours(config, train_file, work, args.overrides)
    print(f"corpus {corpus}: {len(train_text.encode()):,} train bytes, {len(heldout.encode()):,} held-out bytes; "
          f"our data preparation took {prep_seconds:.1f} s (before the clock)")
    runs: list[dict] = []
    for r in range(args.repeats):
        order = ("peer", "ours") if r % 2 == 0 else ("ours", "peer")  # turns: outside load falls on both alike
        for side in order:
            if side not in args.sides:
                continue
            load_before = os.getloadavg()[0]
            print(f"repeat {r + 1}/{args.repeats}: training {side} for {args.seconds:g} s "
                  f"(load average {load_before:.2f})", flush=True)
            if side == "ours":
                points = run_ours(config, train_file, args.seconds, work, str(r), args.overrides, not args.verbose)
                curve = []
                for p in points:
                    nats, nbytes, facts = score_ours(p["checkpoint"], heldout)
                    curve.append({"step": p["step"], "seconds": p["seconds"], "tokens": p["tokens"],
                                  "bpb": bits_per_byte(nats, nbytes)})
            else:
                peer = train_peer(train_text, vocab, args.seconds, args.snapshot_every)
                curve, facts = [], {"params_M": sum(v.numel() for k, v in peer.snapshots[0][2].items()
                                                   if k != "lm_head.weight") / 1e6,
                                    "vocab": len(vocab), "context": 64}
                for it, seconds, weights in peer.snapshots:
                    nats, nbytes = score_peer(peer, weights, heldout)
                    curve.append({"step": it, "seconds": seconds, "tokens": it * 12 * 64,
                                  "bpb": bits_per_byte(nats, nbytes)})
            runs.append({"side": side, "repeat": r, "load_before": load_before, "load_after": os.getloadavg()[0],
                         **facts, "curve": curve})
            final = curve[-1]
            print(f"  {side}: {final['step']} steps in {final['seconds']:.1f} s, held-out {final['bpb']:.4f} bpb")
    print_results(runs, args)
    env = environment("cpu")
    path = write_result("speedrun", {"benchmark": "speedrun", "corpus": str(corpus), "config": str(config),
                                     "overrides": args.overrides, "seconds": args.seconds, "held_out": args.held_out,
                                     "prep_seconds_ours": prep_seconds, "runs": runs,
                                     "summary": summary(runs), "env": env}, args.out)
    print(f"wrote {path}")


def summary(runs: list[dict]) -> dict:
    """Median final bpb per side and the relative reduction of ours against the peer."""
    finals = {side: [r["curve"][-1]["bpb"] for r in runs if r["side"] == side] for side in ("ours", "peer")}
    out = {f"{side}_bpb": statistics.median(v) for side, v in finals.items() if v}
    if "ours_bpb" in out and "peer_bpb" in out:
        out["reduction"] = 1 - out["ours_bpb"] / out["peer_bpb"]
    return out


def print_results(runs: list[dict], args: argparse.Namespace) -> None:
    print("\ncurve: held-out bits per byte against training seconds")
    rows = [{"side": r["side"], "repeat": r["repeat"], "step": p["step"], "seconds": p["seconds"], "bpb": p["bpb"]}
            for r in runs for p in r["curve"]]
    print_table(rows, ["side", "repeat", "step", "seconds", "bpb"])
    print("\nat equal training time (latest snapshot at or before it; 'end': each run's last, when its budget ran out)")
    table = []
    for t in (*(x for x in TIMES if x < args.seconds), "end"):
        row: dict = {"seconds": t}
        for side in ("peer", "ours"):
            curves = [r["curve"] for r in runs if r["side"] == side]
            values = [v for c in curves if (v := c[-1]["bpb"] if t == "end" else at_time(c, t)) is not None]
            row[side] = statistics.median(values) if values else None
        if row["peer"] and row["ours"]:
            row["ours_vs_peer"] = f"{100 * (1 - row['ours'] / row['peer']):.1f}% fewer"
        table.append(row)
    print_table(table, ["seconds", "peer", "ours", "ours_vs_peer"])
    print("\nruns")
    print_table([{"side": r["side"], "repeat": r["repeat"], "params_M": r["params_M"], "vocab": r["vocab"],
                  "context": r["context"], "steps": r["curve"][-1]["step"], "seconds": r["curve"][-1]["seconds"],
                  "bpb": r["curve"][-1]["bpb"], "load_before": r["load_before"], "load_after": r["load_after"]}
                 for r in runs],
                ["side", "repeat", "params_M", "vocab", "context", "steps", "seconds", "bpb", "load_before",
                 "load_after"])


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="one UTF-8 text file (e.g. tinyshakespeare's input.txt)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="our training config")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for our config")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time budget of each run")
    parser.add_argument("--held-out", type=float, default=0.1, help="share of the file's bytes held out (its end)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, taking turns")
    parser.add_argument("--sides", nargs="+", choices=["ours", "peer"], default=["ours", "peer"])
    parser.add_argument("--snapshot-every", type=int, default=50, help="peer iterations between curve points")
    parser.add_argument("--work-dir", default="out/speedrun", help="train/held-out files, datasets and runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--verbose", action="store_true", help="show our training output")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/speedrun.json)")
    args = parser.parse_args(argv)
    if not 0 < args.held_out < 0.5:
        parser.error(f"--held-out must be in (0, 0.5), got {args.held_out}")
    if args.seconds <= 0 or args.repeats <= 0:
        parser.error("--seconds and --repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    return cli.run(lambda: report(args))


if __name__ == "__main__":
    sys.exit(main())
