"""scripts/add_chat_tokens.py: an old checkpoint becomes chat-ready; old ids and old logits are unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import UserError
from model import ModelConfig, Transformer
from model.checkpoint import TOKENIZER, load_model, save_model_checkpoint
from scripts.add_chat_tokens import add_chat_tokens_to_checkpoint, main
from tests.helpers import randomize
from Tokenizer import Tokenizer, train_tokenizer
from Tokenizer.tokenizer import CHAT_TOKENS

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n"] * 30
OLD_VOCAB = 340


@pytest.fixture(scope="module")
def old_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("old_tok") / "tokenizer"
    train_tokenizer(TEXTS, OLD_VOCAB, out, progress=False, chat_tokens=False)
    return out


def make_checkpoint(path: Path, tokenizer_dir: Path, vocab_size: int, tie: bool,
                    dtype: torch.dtype = torch.float32) -> Path:
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=vocab_size, multiple_of=16, max_seq_len=32,
                      tie_embeddings=tie)
    model = Transformer(cfg)
    randomize(model, seed=0)
    return save_model_checkpoint(path, model.to(dtype), tokenizer_dir)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_chat_ready_checkpoint_keeps_old_logits(tmp_path, old_tokenizer_dir, tie):
    src = make_checkpoint(tmp_path / "old", old_tokenizer_dir, OLD_VOCAB, tie)
    out = add_chat_tokens_to_checkpoint(src, tmp_path / "chat")

    tokenizer = Tokenizer.load(out / TOKENIZER)
    assert tokenizer.has_chat_tokens and tokenizer.vocab_size == OLD_VOCAB + len(CHAT_TOKENS)
    old_model, _ = load_model(src)
    new_model, _ = load_model(out)
    assert new_model.cfg.vocab_size == tokenizer.vocab_size
    ids = torch.tensor([Tokenizer.load(old_tokenizer_dir).encode(TEXTS[0])])
    assert ids.tolist() == [tokenizer.encode(TEXTS[0])]
    with torch.no_grad():
        torch.testing.assert_close(new_model(ids)[..., :OLD_VOCAB], old_model(ids), rtol=0, atol=0)
    new_rows = new_model.tok_embeddings.weight[OLD_VOCAB:]
    torch.testing.assert_close(new_rows, old_model.tok_embeddings.weight.mean(0).expand(len(CHAT_TOKENS), -1))
    assert not any(src.joinpath(TOKENIZER).glob("chat_template.jinja"))  # the input is untouched


def test_padded_vocabulary_is_not_grown_and_dtype_is_kept(tmp_path, old_tokenizer_dir):
    src = make_checkpoint(tmp_path / "old", old_tokenizer_dir, 384, tie=True, dtype=torch.bfloat16)
    out = add_chat_tokens_to_checkpoint(src, tmp_path / "chat")
    weights = load_file(str(out / "model.safetensors"))
    old = load_file(str(src / "model.safetensors"))["tok_embeddings.weight"]
    emb = weights["tok_embeddings.weight"]
    assert emb.dtype == torch.bfloat16 and emb.shape == (384, 32)
    assert torch.equal(emb[:OLD_VOCAB], old[:OLD_VOCAB]) and torch.equal(emb[OLD_VOCAB + 4 :], old[OLD_VOCAB + 4 :])
    torch.testing.assert_close(emb[OLD_VOCAB : OLD_VOCAB + 4].float(),
                               old[:OLD_VOCAB].float().mean(0).expand(4, -1), rtol=1e-2, atol=1e-2)


def test_refuses_its_input_and_a_used_output(tmp_path, old_tokenizer_dir, capsys):
    src = make_checkpoint(tmp_path / "old", old_tokenizer_dir, OLD_VOCAB, tie=True)
    before = {p.name: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert main(["--checkpoint", str(src), "--out", str(src)]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert main(["--checkpoint", str(src), "--out", str(src / "chat")]) == 2
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        add_chat_tokens_to_checkpoint(src, tmp_path / "used")
    with pytest.raises(UserError, match="only replaces a directory that add_chat_tokens wrote"):
        add_chat_tokens_to_checkpoint(src, tmp_path / "used", overwrite=True)
    assert (tmp_path / "used" / "notes.txt").read_text() == "keep me"
    chat = add_chat_tokens_to_checkpoint(src, tmp_path / "chat")
    assert add_chat_tokens_to_checkpoint(src, chat, overwrite=True) == chat  # its own output may be replaced
    with pytest.raises(UserError, match="already has the chat tokens"):
        add_chat_tokens_to_checkpoint(chat, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".add-chat-tokens-*"))  # no temporary left behind


def test_command_line(tmp_path, old_tokenizer_dir):
    src = make_checkpoint(tmp_path / "old", old_tokenizer_dir, OLD_VOCAB, tie=False)
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "add_chat_tokens.py"), "--checkpoint",
                           str(src), "--out", str(tmp_path / "chat")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {tmp_path / 'chat'}\n"
    assert Tokenizer.load(tmp_path / "chat" / TOKENIZER).end_of_turn_id == OLD_VOCAB + 3
