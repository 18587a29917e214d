"""Fixtures for generation tests: a real byte-fallback tokenizer trained on ASCII text (so emoji and CJK reach
the model as byte tokens), a random model with decisive logits, and a model that has memorized a few documents
full of multi-byte characters. Each is saved as a real checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer
from model.checkpoint import save_model_checkpoint
from tests.helpers import randomize
from Tokenizer import Tokenizer, train_tokenizer
from Tokenizer.chat import encode_chat_for_training

# ASCII only: every emoji / CJK character below is spelled with byte-fallback tokens.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "Coffee and tea, naive cafes, done and dusted; the end of the story.",
] * 40
# The memorized documents; each is followed by EOS in training.
DOCS = [
    "Hello 🎉 world, 你好世界! Café ☕ and 😀 done.",
    "The quick brown fox 🦊 jumps over the lazy dog 🐶 again.",
    "def add(a, b):\n    return a + b  # 加法 ✨\n",
]
VOCAB = 340
MAX_SEQ_LEN = 96


def tiny_config(vocab_size: int = VOCAB, **overrides) -> ModelConfig:
    """A 2-layer GQA model: milliseconds per step on a CPU."""
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, multiple_of=16,
                  max_seq_len=MAX_SEQ_LEN)
    return ModelConfig(**{**fields, **overrides})


def memorize(model: Transformer, docs: list[list[int]], steps: int = 80) -> None:
    """Overfit the model on the documents (each its own right-padded row, pads ignored by the loss)."""
    T = max(len(d) for d in docs)
    batch = torch.full((len(docs), T), -100, dtype=torch.long)
    for i, d in enumerate(docs):
        batch[i, : len(d)] = torch.tensor(d)
    inputs, targets = batch[:, :-1].clamp_min(0), batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One intra-op thread: these models are so small that a second thread only adds synchronisation, and on a
    busy 2-core machine it makes every op many times slower. Restored after this package's tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inference") / "tokenizer"
    train_tokenizer(CORPUS, VOCAB, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Checkpoint of a random model (untied head) with the test tokenizer."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = Transformer(cfg)
    randomize(model, seed=1)
    return save_model_checkpoint(tmp_path_factory.mktemp("random") / "ckpt", model, tokenizer_dir)


@pytest.fixture(scope="session")
def memorized_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, tokenizer: Tokenizer) -> Path:
    """Checkpoint of a tied-embedding model that continues each of DOCS exactly and then emits EOS."""
    torch.manual_seed(0)
    cfg = tiny_config(tie_embeddings=True)
    model = Transformer(cfg)
    memorize(model, [tokenizer.encode(d, eos=True) for d in DOCS])
    return save_model_checkpoint(tmp_path_factory.mktemp("memorized") / "ckpt", model, tokenizer_dir)


# Conversations the chat model memorizes: the reply to "And then?" depends on the history, and the system message
# changes the reply to "Hello".
GREETING = "Hello world, hello there."
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": GREETING},
     {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "The end of the story."}],
    [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Coffee and tea."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Done and dusted."}],
]


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, tokenizer: Tokenizer) -> Path:
    """Checkpoint of a model that has memorized CONVERSATIONS (rendered by the chat template, as for training)."""
    torch.manual_seed(0)
    cfg = tiny_config(tie_embeddings=True)
    model = Transformer(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a session fixture may be set up before one_thread; see there why one thread
    try:
        memorize(model, [encode_chat_for_training(tokenizer, c)[0] for c in CONVERSATIONS], steps=150)
    finally:
        torch.set_num_threads(threads)
    return save_model_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", model, tokenizer_dir)


@pytest.fixture(scope="session")
def no_chat_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint whose tokenizer was trained without chat markers (as before chat support)."""
    tok_dir = tmp_path_factory.mktemp("no_chat") / "tokenizer"
    train_tokenizer(CORPUS, VOCAB, tok_dir, progress=False, chat_tokens=False)
    return save_model_checkpoint(tmp_path_factory.mktemp("no_chat") / "ckpt", Transformer(tiny_config()), tok_dir)
