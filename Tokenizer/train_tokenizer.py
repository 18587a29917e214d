"""Train the project's SentencePiece BPE tokenizer on a bounded sample of text.

    python Tokenizer/train_tokenizer.py --input SOURCES... --vocab-size N --out DIR [--sample-mb M] [--text-field text]

Reading stops after `sample_mb` of text, so memory stays bounded whatever the corpus size; the sample is the
first `sample_mb` of the stream, so put the sources in the order you want sampled. The model keeps text exactly
as it is (identity normalization, no dummy prefix, spaces kept, digits split one by one, bytes as fallback).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from core.cli import quiet_interrupts

    quiet_interrupts()  # a Ctrl-C during the imports below exits 130 without a traceback

import io
import json
import math
import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm
from tqdm import tqdm

from core import cli
from core.atomic import atomic_directory, check_outside_inputs, remove_stale_temporaries
from core.errors import ConfigError, DataError
from core.paths import check_dir_path
from core.sources import iter_documents
from Tokenizer.chat import DEFAULT_TEMPLATE
from Tokenizer.tokenizer import (
    BOS_ID,
    CHAT_TEMPLATE_FILE,
    CHAT_TOKENS,
    EOS_ID,
    MODEL_FILE,
    PAD_ID,
    UNK_ID,
    Tokenizer,
)

META_FILE = "meta.json"
N_SPECIAL = 4 + len(CHAT_TOKENS)  # unk, bos, eos, pad and the chat markers
MIN_VOCAB_SIZE = N_SPECIAL + 256 + 64  # specials + one piece per byte + room for characters and merges
# SentencePiece drops training sentences longer than max_sentence_length bytes; longer documents are cut into
# pieces of at most this size instead, so no text is lost from the sample.
MAX_SENTENCE_BYTES = 16384
MB = 1_000_000
SEED_LIMIT = 2**32  # SentencePiece's random generator takes an unsigned 32-bit seed


def split_document(text: str, max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Pieces of `text` of at most `max_bytes` UTF-8 bytes, cut after a newline where one is near, never inside
    a character."""
    data = text.encode("utf-8", errors="replace")  # a lone surrogate cannot reach SentencePiece anyway
    start = 0
    while len(data) - start > max_bytes:
        end = start + max_bytes
        newline = data.rfind(b"\n", start + max_bytes // 2, end)
        if newline != -1:
            end = newline + 1
        else:
            while end > start and data[end] & 0xC0 == 0x80:  # a continuation byte: back off to a character start
                end -= 1
            if end == start:  # max_bytes < 4 and one character is longer: take that character whole
                end += 1
                while data[end] & 0xC0 == 0x80:
                    end += 1
        yield data[start:end].decode("utf-8")
        start = end
    if start < len(data):
        yield data[start:].decode("utf-8")


def sample_texts(texts: Iterable[str], max_bytes: int, progress: bool = True) -> tuple[list[str], int]:
    """Read `texts` until `max_bytes` of UTF-8 are collected (no further item is requested after that); returns
    (training sentences, bytes sampled). The last document is cut at the budget."""
    sentences: list[str] = []
    total = 0
    with tqdm(total=max_bytes, unit="B", unit_scale=True, desc="sampling text", disable=not progress) as bar:
        for text in texts:
            for piece in split_document(text):
                size = len(piece.encode("utf-8"))
                if total + size > max_bytes:
                    piece = next(split_document(piece, max_bytes - total))
                    size = len(piece.encode("utf-8"))
                    if total + size > max_bytes:  # a single character larger than what is left
                        return sentences, total
                sentences.append(piece)
                total += size
                bar.update(size)
                if total >= max_bytes:
                    return sentences, total
    return sentences, total


def _train_model(sentences: list[str], vocab_size: int, seed: int, progress: bool, chat_tokens: bool) -> bytes:
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # any character, even one never seen in training, encodes as bytes: no <unk>
        split_digits=True,  # numbers become digit sequences, which helps arithmetic
        normalization_rule_name="identity",  # no NFKC: decode(encode(x)) == x
        add_dummy_prefix=False,  # no invisible space in front of every text
        remove_extra_whitespaces=False,  # keep leading, trailing and repeated spaces (code indentation)
        allow_whitespace_only_pieces=True,  # runs of spaces can become single pieces
        character_coverage=0.9995,  # the rarest characters fall back to bytes instead of taking vocab slots
        max_sentence_length=MAX_SENTENCE_BYTES,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        # Control symbols, unlike user-defined ones, are never matched inside text: only the chat template
        # inserts them (ids 4-7, before the byte pieces).
        control_symbols=list(CHAT_TOKENS) if chat_tokens else [],
        num_threads=os.cpu_count() or 1,
        minloglevel=1 if progress else 2,  # SentencePiece's INFO log is long; keep its warnings when asked
    )
    return model.getvalue()


def check_out_dir(out_dir: str | Path, name: str = "tokenizer directory") -> None:
    """DataError (calling out_dir `name`) unless out_dir can take a tokenizer: absent, or a directory holding
    nothing but one."""
    out_dir = Path(out_dir)
    check_dir_path(out_dir, name, DataError)
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in (MODEL_FILE, META_FILE, CHAT_TEMPLATE_FILE))
        if foreign:
            raise DataError(f"{name} {out_dir} exists and holds files that are not a tokenizer "
                            f"({', '.join(foreign[:3])}); choose a new or empty directory")


def _write_atomically(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a temporary sibling of out_dir and rename it into place, replacing an older tokenizer."""
    check_out_dir(out_dir)  # again: it may have changed during training
    with atomic_directory(out_dir) as tmp:
        remove_stale_temporaries(out_dir.parent, own=tmp)  # left by a training killed while writing
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    sample_mb: float = 64,
    seed: int = 0,
    progress: bool = True,
    chat_tokens: bool = True,
    source: str = "the sources",
) -> Tokenizer:
    """Train a byte-fallback SentencePiece BPE model on the first `sample_mb` MB of `texts` (read from `source`,
    named in errors) and write it to out_dir/tokenizer.model (plus meta.json and the chat template) atomically;
    returns the loaded Tokenizer. chat_tokens=False leaves out the chat markers and template, as tokenizers were
    before chat support. Every setting and out_dir are checked before any text is read."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: {N_SPECIAL} special ids (chat markers included) + 256 byte "
            f"pieces are reserved, and characters and merges need room too; use at least {MIN_VOCAB_SIZE}"
        )
    if not (math.isfinite(sample_mb) and sample_mb > 0):
        raise ConfigError(f"sample_mb must be a positive number of MB, got {sample_mb}")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    sentences, n_bytes = sample_texts(texts, int(sample_mb * MB), progress)
    if n_bytes == 0:
        raise DataError(f"no text to train the tokenizer on: {source} yielded only empty documents")
    if progress:
        print(f"training a {vocab_size}-token BPE tokenizer on {n_bytes / MB:.1f} MB of text", file=sys.stderr)
    try:
        model = _train_model(sentences, vocab_size, seed, progress, chat_tokens)
    except RuntimeError as e:
        # SentencePiece raises RuntimeError for settings the text cannot satisfy (a vocab too large for the text,
        # or too small for its characters); keep its message without the C++ source location in front.
        reason = str(e).rsplit("] ", 1)[-1] or str(e)
        raise DataError(f"cannot train a {vocab_size}-token tokenizer on {n_bytes / MB:.2f} MB of text: {reason}") \
            from None
    meta = {
        "vocab_size": vocab_size,
        "model_type": "bpe",
        "special_ids": {"unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID},
        "chat_tokens": list(CHAT_TOKENS) if chat_tokens else [],
        "sample_bytes": n_bytes,
        "sample_sentences": len(sentences),
        "seed": seed,
        "sentencepiece_version": spm.__version__,
    }
    files = {MODEL_FILE: model, META_FILE: (json.dumps(meta, indent=2) + "\n").encode()}
    if chat_tokens:
        files[CHAT_TEMPLATE_FILE] = DEFAULT_TEMPLATE.read_bytes()
    _write_atomically(out_dir, files)
    return Tokenizer.load(out_dir)


def _check_flags(args) -> None:
    """The numbers and --out, named by their flags, before anything is read (train_tokenizer checks them again for
    its other callers, by parameter name)."""
    check_out_dir(args.out, "--out")
    if args.vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} ({N_SPECIAL} special ids + 256 byte "
                          f"pieces + room for merges), got {args.vocab_size}")
    if not (math.isfinite(args.sample_mb) and args.sample_mb > 0):
        raise ConfigError(f"--sample-mb must be a positive number of MB, got {args.sample_mb}")
    if not 0 <= args.seed < SEED_LIMIT:
        raise ConfigError(f"--seed must be in [0, 2**32), got {args.seed}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input)."""
    parser = cli.ArgumentParser(description="Train the SentencePiece BPE tokenizer on a sample of text.")
    parser.add_argument("--input", nargs="+", required=True, metavar="SOURCE",
                        help="files, directories, globs, hf:NAME[:CONFIG][@SPLIT] or builtin:python-stdlib")
    parser.add_argument("--vocab-size", type=int, required=True, help=f"number of token ids (>= {MIN_VOCAB_SIZE})")
    parser.add_argument("--out", required=True, help="directory to write tokenizer.model into")
    parser.add_argument("--sample-mb", type=float, default=64, help="MB of text to read (default 64)")
    parser.add_argument("--text-field", default="text", help="text field of .jsonl / .parquet / hf sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    def run() -> None:
        _check_flags(args)
        check_outside_inputs(args.out, [spec for spec in args.input if Path(spec).exists()])
        tokenizer = train_tokenizer(iter_documents(args.input, text_field=args.text_field), args.vocab_size,
                                    args.out, sample_mb=args.sample_mb, seed=args.seed, progress=not args.quiet,
                                    source=", ".join(args.input))
        print(f"wrote {tokenizer.directory / MODEL_FILE} (vocab {tokenizer.vocab_size}, sha256 "
              f"{tokenizer.content_hash[:16]})")

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
