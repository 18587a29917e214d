"""Prepare a training dataset: read sources, (train a tokenizer,) tokenize in parallel, write shards + manifest.

    python data/prepare_data.py --input corpus/ more.jsonl --out out/datasets/mine --vocab-size 8192

The output directory appears atomically (built in a temporary sibling, then renamed), and re-running with the same
inputs and tokenizer is a no-op unless --force. The format is described in data/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import from the repo root, not from data/ (which would shadow
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # stdlib names for any module placed here)
    from core.cli import quiet_interrupts

    quiet_interrupts()  # a Ctrl-C during the imports below exits 130 without a traceback

import hashlib
import json
import os
import shutil
import time

from tqdm import tqdm

from core import cli
from core.atomic import atomic_directory, check_outside_inputs, remove_stale_temporaries
from core.errors import DataError, SourceError
from core.paths import check_dir_path
from core.sources import Source, SourceStats, describe_sources, iter_sources, resolve_sources
from data.encode import ParallelEncoder, batch_documents
from data.pieces import PieceStats, cut_documents
from data.shards import FORMAT, HEADER_BYTES, MANIFEST, VERSION, load_manifest, token_dtype
from data.splits import SPLIT_RULE, SPLITS, SplitSink
from Tokenizer import TextTokenizer, has_tokenizer, load_tokenizer, train_tokenizer
from Tokenizer.train_tokenizer import MIN_VOCAB_SIZE

TOKENIZER_SUBDIR = "tokenizer"
DEFAULT_SHARD_TOKENS = 2**26  # 128 MiB of uint16 per shard: few files, each small enough to copy around
BATCH_CHARS = 1 << 18  # characters per work item sent to a worker: big enough to amortize IPC, small for balance


class DatasetConflict(DataError):
    """The output directory already holds something else: a dataset of other inputs, another tokenizer, or files
    that are not a dataset. (Training blames these, and only these, on data.dataset_dir.)"""


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset / container CPU sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dataset_inputs(sources: list[Source], tokenizer: TextTokenizer, text_field: str, val_fraction: float,
                   shard_tokens: int) -> dict:
    """Everything the shards depend on: source files (path, size, mtime), tokenizer, split rule, layout."""
    return {"version": VERSION, "sources": describe_sources(sources), "tokenizer": tokenizer.content_hash,
            "text_field": text_field, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
            "split_rule": SPLIT_RULE}


def dataset_fingerprint(sources: list[Source], tokenizer: TextTokenizer, text_field: str, val_fraction: float,
                        shard_tokens: int) -> str:
    """sha256 of dataset_inputs(...): equal means the dataset is up to date."""
    identity = dataset_inputs(sources, tokenizer, text_field, val_fraction, shard_tokens)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _source_name(source: dict) -> str:
    return source.get("path") or f"{source['kind']}:{source['spec']}"


def describe_differences(old: dict | None, new: dict) -> list[str]:
    """What differs between the dataset_inputs(...) a manifest recorded and the current ones, in words."""
    if not isinstance(old, dict):
        return ["it was built by an older version that did not record its inputs"]
    diffs = []
    before = {_source_name(s): s for s in old.get("sources", [])}
    after = {_source_name(s): s for s in new["sources"]}
    diffs += [f"source {name} added" for name in after if name not in before]
    diffs += [f"source {name} removed" for name in before if name not in after]
    for name in (n for n in after if n in before and before[n] != after[n]):
        a, b = before[name], after[name]
        what = f"size {a.get('size')} -> {b.get('size')}" if a.get("size") != b.get("size") else "modified"
        diffs.append(f"source {name} changed ({what})")
    if not diffs and list(before) != list(after):
        diffs.append("the sources are in another order")
    for key in ("text_field", "val_fraction", "shard_tokens"):
        if old.get(key) != new[key]:
            diffs.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    if old.get("tokenizer") != new["tokenizer"]:
        diffs.append(f"tokenizer {str(old.get('tokenizer'))[:12]} -> {new['tokenizer'][:12]}")
    if (old.get("version"), old.get("split_rule")) != (new["version"], new["split_rule"]):
        diffs.append("it was built with another format version or split rule")
    return diffs or ["its recorded inputs differ"]


def _train_into(directory: Path, sources: list[Source], text_field: str, vocab_size: int, sample_mb: int,
                progress: bool) -> TextTokenizer:
    """Train a tokenizer on the first sample_mb MB of the sources and write it (atomically) into `directory`."""
    return train_tokenizer(iter_sources(sources, text_field), vocab_size, directory, sample_mb=sample_mb,
                           progress=progress, source=_describe(sources))


def _describe(sources: list[Source]) -> str:
    return f"{', '.join(s.location for s in sources[:5])}{' ...' if len(sources) > 5 else ''}"


def _tokenize_into(out: Path, sources: list[Source], tokenizer: TextTokenizer, text_field: str, val_fraction: float,
                   workers: int, shard_tokens: int, progress: bool) -> dict:
    """Write the train/val shards into `out`; return the counts that go into the manifest."""
    dtype = token_dtype(tokenizer.vocab_size)
    stats, piece_stats = SourceStats(), PieceStats()
    sink = SplitSink(out, dtype, shard_tokens, val_fraction)
    batches = batch_documents(cut_documents(iter_sources(sources, text_field, stats), piece_stats), BATCH_CHARS)
    start = time.perf_counter()
    with (ParallelEncoder(tokenizer, dtype, val_fraction, workers) as encoder,
          tqdm(desc="tokenizing", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True) as bar):
        for enc in encoder.map(batches):
            sink.add(enc)
            bar.update(enc.text_bytes)
            bar.set_postfix(docs=sum(sink.documents.values()), tokens=sum(sink.tokens.values()), refresh=False)
    seconds = time.perf_counter() - start
    if stats.documents == 0:
        raise SourceError(f"the sources hold no documents: {_describe(sources)}")
    shards = sink.close()
    tokens, nbytes, docs = sink.tokens, sink.bytes, sink.documents
    total_tokens, total_bytes = sum(tokens.values()), sum(nbytes.values())
    return {
        "dtype": dtype.name,
        "header_bytes": HEADER_BYTES,
        "shards": shards,
        "documents": {**docs, "total": sum(docs.values())},
        "pieces": piece_stats.as_manifest(),
        "split_fallback": sink.fallback,
        "empty_documents_skipped": stats.empty_documents,
        "tokens": {**tokens, "total": total_tokens},
        "source_bytes": {**nbytes, "total": total_bytes},
        "bytes_per_token": {s: (nbytes[s] / tokens[s] if tokens[s] else None) for s in SPLITS}
        | {"total": total_bytes / total_tokens},
        "replaced_bytes": stats.replaced_bytes,
        "tokenize_seconds": round(seconds, 3),
        "tokenize_mb_per_s": round(total_bytes / 1e6 / seconds, 3) if seconds > 0 else None,
    }


def tokenizer_location(dataset_dir: str | Path, tokenizer_dir: str | Path | None) -> tuple[Path, bool]:
    """(directory of the tokenizer, whether it lives inside the dataset): an explicit tokenizer_dir is used as
    is; otherwise the dataset keeps its own in DATASET_DIR/tokenizer."""
    if tokenizer_dir:
        return Path(tokenizer_dir), False
    return Path(dataset_dir) / TOKENIZER_SUBDIR, True


def _check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace a directory that is not a dataset (only a tokenizer/ inside it is expected)."""
    if out.exists() and not force:
        if not out.is_dir():
            raise DatasetConflict(f"--out {out} exists and is not a directory")
        other = sorted(p.name for p in out.iterdir() if p.name != TOKENIZER_SUBDIR)
        if other:
            raise DatasetConflict(f"--out {out} exists and is not a prepared dataset (holds {', '.join(other[:3])}); "
                            "choose another directory or pass --force to replace it")


def prepare_dataset(
    sources: list[str],
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    vocab_size: int | None = None,
    text_field: str = "text",
    val_fraction: float = 0.005,
    workers: int = 0,
    force: bool = False,
    tokenizer_sample_mb: int = 64,
    progress: bool = True,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    out_flag: str = "--out",
) -> Path:
    """Build (or reuse, if up to date) the token dataset in out_dir and return its path.

    tokenizer_dir None means out_dir/tokenizer. If that tokenizer does not exist yet, one is trained with
    vocab_size on up to tokenizer_sample_mb MB of the sources (vocab_size is required then); an existing one is
    used as is, except that force with vocab_size retrains out_dir/tokenizer. workers 0 means all cores.
    """
    out = Path(out_dir)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    if shard_tokens <= 0:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    if vocab_size is not None and vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    if not tokenizer_sample_mb > 0:
        raise DataError(f"tokenizer_sample_mb must be positive, got {tokenizer_sample_mb}")
    check_dir_path(out, "--out", DatasetConflict)
    sources = [str(sources)] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
    resolved = resolve_sources(sources)
    # Never into or over what it reads: --force would replace a source directory with the dataset.
    read = [s.location for s in resolved if s.kind not in ("hf", "builtin")]
    read += [spec for spec in sources if Path(spec).exists()] + ([tokenizer_dir] if tokenizer_dir else [])
    check_outside_inputs(out, read, out_flag)
    workers = workers or available_cpus()

    tok_dir, inside = tokenizer_location(out, tokenizer_dir)
    retrain = inside and force and vocab_size is not None
    tokenizer = None
    if has_tokenizer(tok_dir) and not retrain:
        tokenizer = load_tokenizer(tok_dir)
    elif vocab_size is None:
        raise DataError(f"no tokenizer at {tok_dir}: pass --tokenizer DIR (an existing one) or --vocab-size N "
                        "(train one)")
    elif not inside:  # an external tokenizer directory: trained once, then used as is
        tokenizer = _train_into(tok_dir, resolved, text_field, vocab_size, tokenizer_sample_mb, progress)
    if inside and tokenizer is not None and vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise DatasetConflict(f"{tok_dir} holds a {tokenizer.vocab_size}-token tokenizer, not {vocab_size}: "
                        "pass --force to retrain it, or leave out --vocab-size to use it")

    if (out / MANIFEST).is_file() and not force:
        manifest = load_manifest(out)
        if tokenizer is not None and manifest.get("fingerprint") == dataset_fingerprint(
            resolved, tokenizer, text_field, val_fraction, shard_tokens
        ):
            if progress:
                print(f"{out} is up to date ({manifest['tokens']['total']:,} tokens); --force rebuilds it")
            return out
        diffs = (describe_differences(manifest.get("inputs"),
                                      dataset_inputs(resolved, tokenizer, text_field, val_fraction, shard_tokens))
                 if tokenizer is not None else ["its tokenizer is to be trained anew"])
        raise DatasetConflict(f"{out} holds a dataset built from other inputs ({'; '.join(diffs[:4])}"
                        f"{'; ...' if len(diffs) > 4 else ''}): rebuild it (prepare_data.py --force) or remove it")
    _check_out_dir(out, force)

    with atomic_directory(out) as tmp:
        for stale in remove_stale_temporaries(out.parent, own=tmp):  # left by a killed preparation
            if progress:
                print(f"removed {stale} (left by a killed preparation)")
        if tokenizer is None:
            tokenizer = _train_into(tmp / TOKENIZER_SUBDIR, resolved, text_field, vocab_size, tokenizer_sample_mb,
                                    progress)
        elif inside:  # the old out_dir (tokenizer included) is replaced as a whole, so carry the tokenizer over
            shutil.copytree(tok_dir, tmp / TOKENIZER_SUBDIR)
            tokenizer = load_tokenizer(tmp / TOKENIZER_SUBDIR)
        counts = _tokenize_into(tmp, resolved, tokenizer, text_field, val_fraction, workers, shard_tokens, progress)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": dataset_fingerprint(resolved, tokenizer, text_field, val_fraction, shard_tokens),
            "inputs": dataset_inputs(resolved, tokenizer, text_field, val_fraction, shard_tokens),
            "tokenizer": {
                "hash": tokenizer.content_hash,
                "vocab_size": tokenizer.vocab_size,
                "path": TOKENIZER_SUBDIR if inside else str(Path(tok_dir).resolve()),
            },
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "sources": sources,
            "text_field": text_field,
            "val_fraction": val_fraction,
            "split_rule": SPLIT_RULE,
            **counts,
            "workers": workers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if progress:
        print(f"wrote {out}: {manifest['tokens']['train']:,} train + {manifest['tokens']['val']:,} val tokens "
              f"({manifest['bytes_per_token']['total']:.2f} bytes/token, {manifest['replaced_bytes']} bytes replaced)")
        pieces, fallback = manifest["pieces"], manifest["split_fallback"]
        if pieces["documents_cut"]:
            print(f"{pieces['documents_cut']:,} document(s) longer than {pieces['max_document_chars']:,} characters "
                  f"were cut into {pieces['pieces']:,} pieces for the split")
        if fallback and fallback["split"] == "val":
            print(f"the val split was small: the last {fallback['documents']:,} document(s) "
                  f"({fallback['tokens']:,} tokens) went to it")
        elif fallback:
            print("the train split would have been empty: the last document went to it")
    return out


def _check_flags(args) -> None:
    """Numbers out of range, named by their flags, before anything is read or written (prepare_dataset checks
    them again for its other callers, by parameter name)."""
    if not 0 <= args.val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    for flag, value, low in (("--workers", args.workers, 0), ("--shard-tokens", args.shard_tokens, 1),
                             ("--tokenizer-sample-mb", args.tokenizer_sample_mb, 1)):
        if value < low:
            raise DataError(f"{flag} must be >= {low}, got {value}")
    if args.vocab_size is not None and args.vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (byte fallback takes 260 ids and merges "
                        f"need room), got {args.vocab_size}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; user errors print one line and return 2."""
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="SOURCE",
                   help="files, directories, globs, hf:NAME[:CONFIG][@SPLIT], builtin:python-stdlib")
    p.add_argument("--out", required=True, help="output dataset directory")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", help="existing tokenizer directory, ours (tokenizer.model) or a Hugging Face "
                     "tokenizer.json (an imported model's checkpoint/tokenizer) (default: OUT/tokenizer)")
    tok.add_argument("--vocab-size", type=int, help="train a tokenizer with this many ids into OUT/tokenizer")
    p.add_argument("--text-field", default="text", help="JSON key / parquet column with the text (default: text)")
    p.add_argument("--val-fraction", type=float, default=0.005, help="fraction of documents held out (default 0.005)")
    p.add_argument("--workers", type=int, default=0, help="tokenizing processes (this one included); 0 = all cores")
    p.add_argument("--force", action="store_true", help="rebuild even if the dataset is up to date")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--tokenizer-sample-mb", type=int, default=64, help="MB of text sampled to train the tokenizer")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    def run() -> None:
        _check_flags(args)
        prepare_dataset(args.input, args.out, tokenizer_dir=args.tokenizer, vocab_size=args.vocab_size,
                        text_field=args.text_field, val_fraction=args.val_fraction, workers=args.workers,
                        force=args.force, tokenizer_sample_mb=args.tokenizer_sample_mb,
                        progress=not args.no_progress, shard_tokens=args.shard_tokens)

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
