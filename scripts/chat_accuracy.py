"""How often a chat model answers held-out questions of the built-in corpus right (data/stdlib_chat.py).

    python scripts/chat_accuracy.py --checkpoint out/chat-tiny [--val-fraction 0.1] [--json FILE] [--show 5]

Asks, greedily and one at a time, "What is the signature of NAME?" (in the corpus's wording) for every function of
the modules that the conversation dataset holds out at this val_fraction (configs/chat-tiny.yaml uses 0.1), and
counts a reply right when it states NAME(...) with exactly the real parameter names in order
(data.stdlib_chat.answer_is_right). Also counted: replies that have the answer's shape (a complete NAME(...)).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if __name__ == "__main__":
    from core.cli import quiet_interrupts

    quiet_interrupts()

from core import cli  # noqa: E402
from core.errors import UserError  # noqa: E402


def measure(checkpoint: str, val_fraction: float, max_new_tokens: int = 64, device: str = "auto",
            split: str = "val", limit: int | None = None) -> dict:
    """{"questions", "right", "first_right", "shaped", "accuracy", "replies": [{question, name, expected, reply,
    right, ...}]}; split "train" asks about the fine-tuned modules instead (every k-th function, up to `limit`)."""
    from data.stdlib_chat import answer_is_right, held_out_signature_questions, parameter_names
    from inference import Generator
    from inference.errors import HistoryTruncatedWarning

    generator = Generator.from_checkpoint(checkpoint, device=device)
    questions = held_out_signature_questions(val_fraction, split)
    if limit is not None and len(questions) > limit:
        questions = questions[:: -(-len(questions) // limit)]  # spread over the modules, deterministic
    if not questions:
        raise UserError(f"--val-fraction {val_fraction} holds out no module: nothing to ask")
    replies = []
    for question, name, signature in questions:
        with warnings.catch_warnings():
            warnings.simplefilter("error", HistoryTruncatedWarning)
            reply = "".join(generator.chat([{"role": "user", "content": question}], max_new_tokens))
        got, expected = parameter_names(reply, name), parameter_names(signature, name)
        replies.append({"question": question, "name": name, "expected": signature, "reply": reply,
                        "right": answer_is_right(reply, name, signature), "shaped": got is not None,
                        "first_right": bool(got and expected and got[0] == expected[0]) or got == expected == []})
    counts = {k: sum(r[k] for r in replies) for k in ("right", "first_right", "shaped")}
    return {"checkpoint": str(checkpoint), "val_fraction": val_fraction, "split": split, "questions": len(replies),
            **counts, "accuracy": counts["right"] / len(replies), "replies": replies}


def held_out_loss(checkpoint: str, dataset_dir: str, seq_len: int = 256) -> float:
    """Mean loss on the assistant tokens of a prepared conversation dataset's val split (the number training logs
    as val_loss), for any checkpoint with the dataset's tokenizer: a base model before fine-tuning too."""
    import torch

    from data.chat_dataset import ChatDataset, check_chat_compatible
    from model.checkpoint import TOKENIZER, load_model
    from model.loss import IGNORE_INDEX
    from Tokenizer import load_tokenizer
    from train.engine import next_token_loss
    from train.sft import ChatLoader

    model, ckpt = load_model(checkpoint)
    dataset = ChatDataset(dataset_dir)
    check_chat_compatible(dataset, load_tokenizer(ckpt / TOKENIZER), model.cfg.vocab_size)
    loader = ChatLoader(dataset, micro_batch_size=1, seq_len=min(seq_len, model.cfg.max_seq_len))
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader.validation_batches(10**9):
            total += float(next_token_loss(model.eval(), batch, reduction="sum"))
            count += int((batch[1] != IGNORE_INDEX).sum())
    return total / count


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="chat_accuracy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run's out_dir (latest)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="data.val_fraction of the fine-tuning run")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the held-out modules; train: the modules fine-tuned on (for comparison)")
    p.add_argument("--limit", type=int, help="ask at most this many questions (spread over the modules)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the result, every reply included, to this file")
    p.add_argument("--show", type=int, default=3, help="print this many replies")
    p.add_argument("--loss-dataset", help="also report the loss on the assistant tokens of this prepared "
                   "conversation dataset's val split (e.g. the fine-tuning run's data.dataset_dir)")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    result = measure(args.checkpoint, args.val_fraction, args.max_new_tokens, args.device, args.split, args.limit)
    for r in result["replies"][: args.show]:
        verdict = "right" if r["right"] else "wrong"
        print(f"Q: {r['question']}\nA: {r['reply']!r}\n   expected {r['expected']}  ->  {verdict}")
    which = "held-out" if args.split == "val" else "fine-tuned-on"
    print(f"{args.checkpoint}: {result['right']}/{result['questions']} signature questions about {which} modules "
          f"right ({100 * result['accuracy']:.1f}%); first parameter right {result['first_right']}; "
          f"{result['shaped']} replies shaped like an answer (NAME(...))")
    if args.loss_dataset:
        result["held_out_loss"] = held_out_loss(args.checkpoint, args.loss_dataset)
        print(f"{args.checkpoint}: loss on the assistant tokens of the held-out conversations "
              f"{result['held_out_loss']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
