"""Shared pieces for fine-tuning tests: a conversation corpus with topics, a pretrained tiny checkpoint whose
tokenizer has chat markers, and chat run configs on top of tests/train/conftest.py's tiny ones."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tests.train.conftest import TinyData, tiny_config
from train.config import Config

TOPICS = ["add", "sub", "mul", "max", "min", "len", "upper", "lower", "first", "last", "echo", "count"]


def make_conversations(path: Path, n: int = 480, seed: int = 0) -> Path:
    """A .jsonl of short, learnable conversations over TOPICS: one- and two-turn, some with a system message, and
    some in the prompt/completion form. Assistant turns vary in length, so micro batches hold very different
    numbers of target tokens."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            question, answer = f"{topic} {a} {b}?", " ".join([str(a + b)] * rng.randint(1, 8))
            if i % 5 == 0:
                row = {"prompt": question, "completion": answer, "topic": topic}
            else:
                messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                if i % 3 == 0:
                    messages = [{"role": "system", "content": "Be exact."}, *messages,
                                {"role": "user", "content": "again?"}, {"role": "assistant", "content": answer}]
                row = {"messages": messages, "topic": topic}
            f.write(json.dumps(row) + "\n")
    return path


@dataclass
class ChatSetup:
    data: TinyData
    conversations: Path
    base: Path  # a pretrained run directory: its checkpoint's tokenizer has chat markers
    root: Path


def make_chat_setup(root: Path, data: TinyData) -> ChatSetup:
    """Pretrain a tiny base for 4 steps in root/base and write the conversations beside it."""
    from train.trainer import train

    train(tiny_config(root / "base", data, "train.max_steps=4", "train.sample_tokens=0"))
    return ChatSetup(data, make_conversations(root / "chats.jsonl"), root / "base", root)


def chat_config(setup: ChatSetup, out_dir: Path, *overrides: str) -> Config:
    """Fine-tune setup.base on setup.conversations: 8 rows of 64 tokens per step, 4 of them per micro batch."""
    return tiny_config(
        out_dir, setup.data,
        "data.format=chat", f"data.sources=[{setup.conversations}]", f"data.dataset_dir={setup.root / 'chat_ds'}",
        "data.val_fraction=0.2", f"train.init_from={setup.base}", "train.seq_len=64", "train.micro_batch_size=4",
        "train.max_steps=12", "train.eval_interval=6", "train.save_interval=6", "train.sample_prompt=add 1 2?",
        "optim.lr=1e-2", *overrides,
    )
