"""Fine-tuning throughput: conversations packed into rows (with document masking) against one per padded row.

    python benchmarks/sft_packing.py --checkpoint out/tiny-chat-base [--steps 20] [--rounds 3]

Builds the built-in conversation corpus (builtin:python-stdlib-chat) with the checkpoint's tokenizer, then times
optimizer steps of the tiny model (configs/chat-tiny.yaml's batch: 16 rows of 256 tokens) through the real engine
and loader, packing and padding alternately, `--rounds` times each. Reports optimizer steps/s, the assistant
(target) tokens per second that actually train the model, and rows' fill. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common
import torch
from common import environment, print_table, write_result

from data.chat_dataset import ChatDataset, prepare_chat_dataset
from model.checkpoint import TOKENIZER, find_checkpoint
from Tokenizer import load_tokenizer
from train.config import load_config
from train.engine import build_engine, count_targets, summed_next_token_loss
from train.parallel import World, resolve_plan
from train.sft import ChatLoader


def run(loader: ChatLoader, engine, steps: int) -> dict:
    targets = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = loader.next_batch()
        n = count_targets(batch)
        engine.train_step([batch], summed_next_token_loss, [1 / max(n, 1)])
        targets += n
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "targets": targets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint whose tokenizer has chat markers")
    p.add_argument("--config", default=str(common.ROOT / "configs" / "chat-tiny.yaml"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()

    ckpt = find_checkpoint(args.checkpoint)
    cfg = load_config(args.config, [f"train.init_from={ckpt}", "train.device=cpu"])
    tokenizer = load_tokenizer(ckpt / TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = ChatDataset(prepare_chat_dataset(cfg.data.sources, Path(tmp) / "ds", tokenizer,
                                                   cfg.data.val_fraction, info=lambda _: None))
        t = cfg.train
        plan = resolve_plan(t, World())
        results = {True: [], False: []}
        fill = {}
        for pack in (True, False):
            loader = ChatLoader(dataset, t.batch_size, t.seq_len, seed=0, pack=pack)
            lengths = dataset.lengths("train").clip(max=t.seq_len)
            fill[pack] = float(lengths.sum() / (len(loader._rows(0)) * t.seq_len))
        for _ in range(args.rounds):
            for pack in (True, False):
                torch.manual_seed(0)
                engine = build_engine(cfg, plan, ckpt)
                loader = ChatLoader(dataset, t.batch_size, t.seq_len, seed=0, pack=pack)
                run(loader, engine, 2)  # warm-up
                results[pack].append(run(loader, engine, args.steps))
    rows = []
    for pack in (True, False):
        rates = [r["targets"] / r["seconds"] for r in results[pack]]
        steps = [args.steps / r["seconds"] for r in results[pack]]
        rows.append({"batching": "packed + document mask" if pack else "padded, one per row",
                     "steps_per_s": statistics.median(steps), "target_tok_per_s": statistics.median(rates),
                     "row_fill": fill[pack]})
    rows[0]["ratio"] = rows[0]["target_tok_per_s"] / rows[1]["target_tok_per_s"]
    rows[1]["ratio"] = 1.0
    print_table(rows, ["batching", "steps_per_s", "target_tok_per_s", "row_fill", "ratio"])
    path = write_result("sft_packing-cpu", {"environment": environment("cpu"), "rows": rows, "steps": args.steps,
                                            "rounds": args.rounds, "batch": [t.batch_size, t.seq_len]}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
