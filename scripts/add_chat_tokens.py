"""Make a checkpoint whose tokenizer has no chat markers ready for chat fine-tuning.

    python scripts/add_chat_tokens.py --checkpoint out/tiny --out out/tiny-chat

Writes a new weights-only checkpoint (atomically; --out must be new or empty and is never the input): the
tokenizer with <|system|> <|user|> <|assistant|> <|end_of_turn|> appended as control pieces (every old id
unchanged, Tokenizer/extend.py) and its chat_template.jinja, and the model with its embedding and output head
grown to match, new rows set to the mean of the old ones (model/vocab.py). Weights keep their stored dtype.
Fine-tune it on conversations with `train.init_from=OUT`: until then the markers mean nothing to the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from safetensors import safe_open  # noqa: E402

from core.errors import CheckpointError, UserError  # noqa: E402
from model.vocab import resize_vocab, set_rows_to_mean  # noqa: E402
from Tokenizer.extend import add_chat_tokens  # noqa: E402
from Tokenizer.tokenizer import CHAT_TOKENS  # noqa: E402
from train.checkpoint import TOKENIZER, WEIGHTS, find_checkpoint, load_model, save_model_checkpoint  # noqa: E402


def add_chat_tokens_to_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `out`: the checkpoint with chat markers in its tokenizer and a vocabulary grown to match."""
    ckpt_dir = find_checkpoint(checkpoint)
    out = Path(out)
    if out.resolve() in (ckpt_dir.resolve(), Path(checkpoint).resolve()):
        raise UserError(f"--out {out} is the input checkpoint; write the chat-ready copy to a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new directory")
    if not (ckpt_dir / TOKENIZER).is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {TOKENIZER}/ directory: there is no tokenizer to extend")
    with safe_open(str(ckpt_dir / WEIGHTS), "pt") as f:
        stored_dtype = f.get_tensor("tok_embeddings.weight").dtype
    model, cfg, _ = load_model(ckpt_dir)  # fp32 on the CPU: the mean of the old rows is taken in fp32
    with tempfile.TemporaryDirectory(prefix=".add-chat-tokens-", dir=out.resolve().parent) as tmp:
        tokenizer = add_chat_tokens(ckpt_dir / TOKENIZER, Path(tmp) / TOKENIZER)
        old_size = tokenizer.vocab_size - len(CHAT_TOKENS)
        if tokenizer.vocab_size > model.cfg.vocab_size:
            resize_vocab(model, tokenizer.vocab_size)
        else:  # a padded vocabulary already has rows for the new ids; they were never trained as targets
            set_rows_to_mean(model, old_size, tokenizer.vocab_size)
        cfg.model.vocab_size = model.cfg.vocab_size
        save_model_checkpoint(out, model.to(stored_dtype), cfg, tokenizer.directory)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input prints one `error:` line and returns 2."""
    parser = argparse.ArgumentParser(description="Add chat tokens to a checkpoint's tokenizer and grow its model.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or training run directory")
    parser.add_argument("--out", required=True, help="new checkpoint directory to write")
    args = parser.parse_args(argv)
    try:
        out = add_chat_tokens_to_checkpoint(args.checkpoint, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
