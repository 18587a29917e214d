"""Data preparation speed: python benchmarks/data_prep.py [--input SOURCES...] [--mb 20] [--tokenizer DIR]

Tokenizes the same corpus with 1 worker, 2 workers and all cores (whole prepare_dataset calls: reading, pool
start-up, tokenization, shard writing), reports MB/s of source text, the speed-up over 1 worker and the CPU time
spent (this process + workers; on a busy machine wall time grows but CPU time does not), then times
the DataLoader on the result. Without --input it builds a ~20 MB corpus from the Python standard library
(repeated as needed). Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
from common import environment, print_table, write_result

from core.sources import iter_documents
from data.prepare_data import prepare_dataset
from data.shards import load_manifest
from Tokenizer import Tokenizer, train_tokenizer


def make_corpus(directory: Path, megabytes: float) -> Path:
    """Write standard-library sources as .py files until `megabytes` MB (a marker keeps repeats distinct)."""
    directory.mkdir(parents=True)
    target, written, i = megabytes * 1e6, 0, 0
    while written < target:
        for text in iter_documents(["builtin:python-stdlib"]):
            doc = f"# copy {i}\n{text}"
            (directory / f"{i:06d}.py").write_text(doc, encoding="utf-8")
            written += len(doc.encode())
            i += 1
            if written >= target:
                break
    return directory


def time_prepare(sources: list[str], tokenizer: Path, out: Path, counts: list[int], repeats: int) -> list[dict]:
    """Median wall and CPU time of full prepare_dataset runs per worker count; the counts are interleaved in each
    round, so a change in machine load hits all of them alike."""
    times: dict[int, list[float]] = {w: [] for w in counts}
    cpu: dict[int, list[float]] = {w: [] for w in counts}
    for _ in range(repeats):
        for w in counts:
            before = _cpu_seconds()
            start = time.perf_counter()
            prepare_dataset(sources, out, tokenizer_dir=tokenizer, workers=w, force=True, progress=False)
            times[w].append(time.perf_counter() - start)
            cpu[w].append(_cpu_seconds() - before)
    m = load_manifest(out)
    mb = m["source_bytes"]["total"] / 1e6
    return [{"workers": w, "seconds": statistics.median(times[w]), "cpu_seconds": statistics.median(cpu[w]),
             "MB": mb, "MB/s": mb / statistics.median(times[w]), "tokens": m["tokens"]["total"],
             "runs_s": [round(t, 2) for t in times[w]]} for w in counts]


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the pool workers are joined by prepare_dataset)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_loader(dataset_dir: Path, micro_batch_size: int, seq_len: int, batches: int) -> dict:
    """Batches/s of DataLoader.next_batch on the prepared dataset (page cache warm after the first pass)."""
    from train.dataloader import DataLoader, TokenDataset  # torch is imported only here, not in the workers

    loader = DataLoader(TokenDataset(dataset_dir), micro_batch_size, seq_len, seed=0)
    for _ in range(10):
        loader.next_batch()
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    seconds = time.perf_counter() - start
    return {"micro_batch_size": micro_batch_size, "seq_len": seq_len, "batches/s": batches / seconds,
            "tokens/s": batches * micro_batch_size * seq_len / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", help="sources to tokenize (default: a generated stdlib corpus)")
    p.add_argument("--mb", type=float, default=20, help="size of the generated corpus in MB")
    p.add_argument("--tokenizer", help="tokenizer directory (default: train a 4096-id one on 8 MB of the corpus)")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts to time (default: 1, 2, all cores)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the worker counts (medians are reported)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/data_prep.json)")
    args = p.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine skews the numbers: record it
    tmp = Path(tempfile.mkdtemp(prefix="data-prep-bench-"))
    try:
        sources = args.input or [str(make_corpus(tmp / "corpus", args.mb))]
        if args.tokenizer:
            tokenizer = Path(args.tokenizer)
        else:
            tokenizer = tmp / "tokenizer"
            train_tokenizer(iter_documents(sources), 4096, tokenizer, sample_mb=8, progress=False)
        counts = args.workers or sorted({1, 2, os.cpu_count() or 1})
        rows = time_prepare(sources, tokenizer, tmp / "dataset", counts, args.repeats)
        base = next((r["MB/s"] for r in rows if r["workers"] == 1), None)
        for r in rows:
            r["speedup"] = r["MB/s"] / base if base else None
        loader = [time_loader(tmp / "dataset", 8, 1024, 300), time_loader(tmp / "dataset", 32, 2048, 100)]
        vocab = Tokenizer.load(tokenizer).vocab_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = (load_before, os.getloadavg()[0])
    print(f"tokenization ({rows[0]['MB']:.1f} MB, vocab {vocab}, {os.cpu_count()} CPUs, "
          f"1-min load average {load[0]:.1f} before / {load[1]:.1f} after)")
    print_table(rows, ["workers", "seconds", "cpu_seconds", "MB/s", "speedup", "tokens"])
    print("\nloader (memory-mapped, int64 batches)")
    print_table(loader, ["micro_batch_size", "seq_len", "batches/s", "tokens/s"])
    payload = {"benchmark": "data_prep", "env": environment(), "sources": args.input or f"generated {args.mb} MB",
               "vocab_size": vocab, "load_average_1min": load, "tokenization": rows, "loader": loader}
    print(f"\nwrote {write_result('data_prep', payload, args.out)}")


if __name__ == "__main__":
    main()
