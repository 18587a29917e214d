"""Make a checkpoint whose tokenizer has no chat markers ready for chat fine-tuning.

    python scripts/add_chat_tokens.py --checkpoint out/tiny --out out/tiny-chat [--overwrite]

Writes a new model checkpoint (atomically; --out never overlaps the input, and --overwrite only replaces a
directory this tool wrote): the tokenizer with <|system|> <|user|> <|assistant|> <|end_of_turn|> appended as
control pieces (every old id unchanged, Tokenizer/extend.py) and its chat_template.jinja, and the model with its
embedding and output head grown to match, new rows set to the mean of the old ones (model/vocab.py). Weights keep
their stored dtype. Fine-tune it on conversations with `train.init_from=OUT`: until then the markers mean nothing
to the model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if __name__ == "__main__":
    from core.cli import quiet_interrupts

    quiet_interrupts()  # a Ctrl-C during the imports below exits 130 without a traceback

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from core import cli  # noqa: E402
from core.atomic import check_output_dir  # noqa: E402
from core.errors import CheckpointError  # noqa: E402
from model.checkpoint import (  # noqa: E402
    EMBEDDING,
    TOKENIZER,
    WEIGHTS,
    find_checkpoint,
    load_model,
    save_model_checkpoint,
)
from model.vocab import resize_vocab, set_rows_to_mean  # noqa: E402
from Tokenizer.extend import add_chat_tokens  # noqa: E402
from Tokenizer.tokenizer import CHAT_TOKENS  # noqa: E402

TOOL = "add_chat_tokens"  # what --overwrite may replace


def add_chat_tokens_to_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write `out`: the checkpoint with chat markers in its tokenizer and a vocabulary grown to match."""
    ckpt_dir = find_checkpoint(checkpoint)
    out = Path(out)
    check_output_dir(out, [checkpoint, ckpt_dir], TOOL, overwrite)
    if not (ckpt_dir / TOKENIZER).is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no {TOKENIZER}/ directory: there is no tokenizer to extend")
    with safe_open(str(ckpt_dir / WEIGHTS), "pt") as f:
        stored_dtype = f.get_slice(EMBEDDING).get_dtype()
    model, _ = load_model(ckpt_dir)  # fp32 on the CPU: the mean of the old rows is taken in fp32
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".add-chat-tokens-", dir=out.resolve().parent) as tmp:
        tokenizer = add_chat_tokens(ckpt_dir / TOKENIZER, Path(tmp) / TOKENIZER)
        old_size = tokenizer.vocab_size - len(CHAT_TOKENS)
        if tokenizer.vocab_size > model.cfg.vocab_size:
            resize_vocab(model, tokenizer.vocab_size)
        else:  # a padded vocabulary already has rows for the new ids; they were never trained as targets
            set_rows_to_mean(model, old_size, tokenizer.vocab_size)
        dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[stored_dtype]
        save_model_checkpoint(out, model.to(dtype), tokenizer.directory, written_by=TOOL)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; bad input prints one `error:` line and returns 2."""
    parser = cli.ArgumentParser(description="Add chat tokens to a checkpoint's tokenizer and grow its model.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or training run directory")
    parser.add_argument("--out", required=True, help="new checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if this tool wrote it")
    args = parser.parse_args(argv)

    def run() -> None:
        print(f"wrote {add_chat_tokens_to_checkpoint(args.checkpoint, args.out, args.overwrite)}")

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
