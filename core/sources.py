"""Document sources: turn source specs (paths, globs, `hf:...`, `builtin:...`) into normalized document texts.

Spec kinds:
    path/to/file.txt | .md | .py         one document per file
    path/to/file.jsonl | .jsonl.gz       one document per line, text in the `text_field` key
    path/to/file.parquet                 one document per row, text in the `text_field` column (pyarrow)
    a directory                          every file of the kinds above below it (sorted, hidden entries skipped)
    a glob (`corpus/**/*.md`)            every match, sorted
    hf:NAME[:CONFIG][@SPLIT]             a Hugging Face dataset, streamed with `datasets` (split defaults to train)
    builtin:python-stdlib                the .py files of the running Python's standard library, tests excluded

Every text is normalized the same way: bytes that are not valid UTF-8 become U+FFFD and are counted in
SourceStats.replaced_bytes (never dropped silently), a leading BOM is removed, and CRLF / CR become LF.
Empty documents are skipped and counted.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import re
import sys
import sysconfig
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import SourceError

TEXT_SUFFIXES = (".txt", ".md", ".py")  # .py: the default corpus is Python code
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
BUILTINS = ("python-stdlib",)

# Standard-library folders that are not ordinary library code: test suites, installed third-party packages,
# the frozen-module test package, build configuration.
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "__phello__"}
# Generated data tables, not code anyone wrote: they would skew a small corpus (topics.py alone is 750 KB).
_STDLIB_GENERATED = re.compile(r"pydoc_data/topics\.py|_sysconfigdata_.*\.py|re/_casefix\.py|stringprep\.py")


@dataclass
class SourceStats:
    """Counters filled while documents are read."""

    documents: int = 0  # documents yielded
    empty_documents: int = 0  # documents skipped because they were empty after normalization
    replaced_bytes: int = 0  # invalid UTF-8 bytes (and lone surrogates from JSON escapes) replaced by U+FFFD
    files: int = 0  # files opened


@dataclass(frozen=True)
class Source:
    """One concrete input: a file of a known kind, a Hugging Face dataset, or a builtin corpus."""

    kind: str  # "text", "jsonl", "parquet", "hf" or "builtin"
    location: str  # file path, or the spec after "hf:" / "builtin:"


# ---- decoding ----------------------------------------------------------------------------------------------------

_replaced = threading.local()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _replaced.count += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("mini_llm_count_replace", _count_and_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid bytes with U+FFFD; returns (text, number of bytes replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    _replaced.count = 0
    text = data.decode("utf-8", errors="mini_llm_count_replace")
    return text, _replaced.count


def replace_surrogates(text: str) -> tuple[str, int]:
    """Replace lone surrogates (JSON can spell them as \\udXXX escapes; UTF-8 cannot hold them) with U+FFFD."""
    if not _SURROGATE.search(text):
        return text, 0
    return _SURROGATE.subn("\ufffd", text)


def normalize_text(text: str) -> str:
    """Drop a leading BOM and turn CRLF and lone CR into LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# ---- resolving specs ---------------------------------------------------------------------------------------------


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _explicit_file(path: Path) -> Source:
    kind = _file_kind(path)
    if kind is None:
        raise SourceError(f"unknown source kind for {path}: expected one of {', '.join(KNOWN_SUFFIXES)}")
    return Source(kind, str(path))


def _walk_directory(root: Path) -> list[Source]:
    """Files of known kinds below `root`, sorted by relative path; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and _file_kind(path) is not None:
                found.append(Source(_file_kind(path), str(path)))
    if not found:
        raise SourceError(f"directory {root} holds no source files ({', '.join(KNOWN_SUFFIXES)})")
    return found


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split `hf:NAME[:CONFIG][@SPLIT]` into (name, config or None, split)."""
    body = spec[len("hf:") :] if spec.startswith("hf:") else spec
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise SourceError(f"bad Hugging Face source {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
    return name, config or None, split or "train"


def resolve_sources(specs: list[str]) -> list[Source]:
    """Expand specs into concrete sources, in order; raise SourceError for missing paths or unknown kinds."""
    if isinstance(specs, str):
        specs = [specs]
    sources: list[Source] = []
    for spec in specs:
        spec = str(spec)
        scheme = re.match(r"([A-Za-z][\w+.-]+):", spec)
        if spec.startswith("hf:"):
            parse_hf_spec(spec)
            sources.append(Source("hf", spec[len("hf:") :]))
        elif spec.startswith("builtin:"):
            name = spec[len("builtin:") :]
            if name not in BUILTINS:
                known = ", ".join("builtin:" + b for b in BUILTINS)
                raise SourceError(f"unknown builtin source {spec!r}: known are {known}")
            sources.append(Source("builtin", name))
        elif scheme and not os.path.exists(spec):
            raise SourceError(
                f"unknown source kind {scheme.group(1)!r} in {spec!r}: use a path, hf:NAME or builtin:NAME")
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise SourceError(f"no files match {spec!r}")
            for match in matches:
                path = Path(match)
                sources.extend(_walk_directory(path) if path.is_dir() else [_explicit_file(path)])
        else:
            path = Path(spec)
            if not path.exists():
                raise SourceError(f"source path does not exist: {spec}")
            sources.extend(_walk_directory(path) if path.is_dir() else [_explicit_file(path)])
    return sources


def _is_codec_table(path: Path) -> bool:
    """encodings/*.py files written by gencodec.py are 256-entry data tables."""
    if path.parent.name != "encodings":
        return False
    with open(path, "rb") as f:
        return b"gencodec.py" in f.read(512)


def stdlib_files() -> list[Path]:
    """The running Python's standard-library .py files, sorted, without tests, site-packages or generated tables."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if name.endswith(".py") and not _STDLIB_GENERATED.fullmatch(rel) and not _is_codec_table(path):
                files.append(path)
    return files


def describe_sources(sources: list[Source]) -> list[dict]:
    """A JSON-able identity of each source (path, size, mtime) used to decide whether a dataset is up to date."""
    out = []
    for src in sources:
        if src.kind == "hf":
            out.append({"kind": "hf", "spec": src.location})  # remote: the spec is all we can compare
        elif src.kind == "builtin":
            out.append({"kind": "builtin", "spec": src.location, "python": sys.version})
        else:
            st = os.stat(src.location)
            out.append({"kind": src.kind, "path": os.path.abspath(src.location), "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns})
    return out


# ---- reading -----------------------------------------------------------------------------------------------------


def _read_text_file(path: Path, stats: SourceStats) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None
    stats.files += 1
    text, bad = decode_utf8(data)
    stats.replaced_bytes += bad
    yield text


def _field(record: object, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise SourceError(f"{where}: no {text_field!r} field (set --text-field / data.text_field)")
    value = record[text_field]
    if not isinstance(value, str):
        raise SourceError(f"{where}: field {text_field!r} is {type(value).__name__}, expected a string")
    return value


def _read_jsonl(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    stats.files += 1
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                line, bad = decode_utf8(raw)
                if not line.strip():
                    continue
                stats.replaced_bytes += bad
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                text, bad = replace_surrogates(_field(record, text_field, f"{path}:{lineno}"))
                stats.replaced_bytes += bad
                yield text
    except (OSError, EOFError, zlib.error) as e:  # unreadable file, or a truncated / corrupt gzip stream
        raise SourceError(f"cannot read {path}: {e}") from None


def _read_parquet(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stats.files += 1
    try:
        pfile = pq.ParquetFile(path)
        if text_field not in pfile.schema_arrow.names:
            raise SourceError(f"{path}: no {text_field!r} column (columns: {', '.join(pfile.schema_arrow.names)})")
        row = 0
        for batch in pfile.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                if isinstance(value, bytes):  # a binary column: decode like a file
                    value, bad = decode_utf8(value)
                    stats.replaced_bytes += bad
                yield _field({text_field: value}, text_field, f"{path} row {row}")
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"cannot read parquet file {path}: {e}") from None


def hf_records(spec: str) -> Iterator[tuple[dict, str]]:
    """(record, "hf:SPEC record I") of a Hugging Face dataset `NAME[:CONFIG][@SPLIT]`, streamed with `datasets`;
    SourceError when the package is missing or the dataset cannot be loaded."""
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError:
        datasets = None
    # A folder named datasets/ in the working directory imports as an empty namespace package.
    if getattr(datasets, "load_dataset", None) is None:
        raise SourceError(f"source hf:{spec} needs the `datasets` package: pip install datasets")
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # network, auth or unknown-dataset errors all mean "cannot use this source"
        raise SourceError(f"cannot load Hugging Face dataset hf:{spec}: {e}") from None
    for i, record in enumerate(stream):
        yield record, f"hf:{spec} record {i}"


def _read_hf(spec: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    for record, where in hf_records(spec):
        text, bad = replace_surrogates(_field(record, text_field, where))
        stats.replaced_bytes += bad
        yield text


def _read_source(src: Source, text_field: str, stats: SourceStats) -> Iterator[str]:
    if src.kind == "text":
        yield from _read_text_file(Path(src.location), stats)
    elif src.kind == "jsonl":
        yield from _read_jsonl(Path(src.location), text_field, stats)
    elif src.kind == "parquet":
        yield from _read_parquet(Path(src.location), text_field, stats)
    elif src.kind == "hf":
        yield from _read_hf(src.location, text_field, stats)
    else:
        for path in stdlib_files():
            yield from _read_text_file(path, stats)


def iter_sources(sources: list[Source], text_field: str = "text", stats: SourceStats | None = None) -> Iterator[str]:
    """Normalized, non-empty document texts from already resolved sources, in order."""
    stats = stats if stats is not None else SourceStats()
    for src in sources:
        for text in _read_source(src, text_field, stats):
            text = normalize_text(text)
            if not text:
                stats.empty_documents += 1
                continue
            stats.documents += 1
            yield text


def iter_documents(specs: list[str], text_field: str = "text", stats: SourceStats | None = None) -> Iterator[str]:
    """Normalized, non-empty document texts from source specs, in a deterministic order."""
    return iter_sources(resolve_sources(specs), text_field, stats)
