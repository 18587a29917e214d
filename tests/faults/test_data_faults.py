"""Tokenizer training and dataset preparation killed with SIGKILL at several points: nothing half-written ever
carries the final name, the next run produces exactly what an uninterrupted run does, and it removes what the
killed one left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.sources import iter_documents
from data.prepare_data import prepare_dataset
from data.shards import load_manifest
from tests.train.conftest import make_corpus
from Tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]

# Runs tokenizer training (`tokenizer`) or a whole preparation (`dataset`) and SIGKILLs itself at the n-th call
# of a chosen function: the file writes inside the temporary directory, or the fsync before its rename.
KILL = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import core.atomic as atomic
    import data.shards as shards
    from data.prepare_data import prepare_dataset
    from Tokenizer import train_tokenizer
    from core.sources import iter_documents

    kind, point, nth = {job!r}, {point!r}, {nth}
    calls = []

    def die_at(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    die_at(*{{"fsync": (atomic.os, "fsync"), "shard": (shards.SplitWriter, "_close")}}[point])
    if kind == "tokenizer":
        train_tokenizer(iter_documents([{corpus!r}]), 384, {out!r}, progress=False)
    else:
        prepare_dataset([{corpus!r}], {out!r}, vocab_size=384, val_fraction=0.1, workers=1, progress=False,
                        shard_tokens=2000)
    """
)


def _killed(job: str, point: str, nth: int, corpus: Path, out: Path) -> None:
    script = KILL.format(root=str(ROOT), job=job, point=point, nth=nth, corpus=str(corpus), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "docs", n_docs=120)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, corpus) -> Path:
    """The dataset an uninterrupted preparation writes."""
    return prepare_dataset([str(corpus)], tmp_path_factory.mktemp("clean") / "ds", vocab_size=384,
                           val_fraction=0.1, workers=1, progress=False, shard_tokens=2000)


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 2])
def test_sigkill_while_writing_the_tokenizer(tmp_path, corpus, nth):
    out = tmp_path / "tok"
    _killed("tokenizer", "fsync", nth, corpus, out)
    assert not out.exists()  # never half a tokenizer under the final name
    assert list(tmp_path.glob(".tmp-tok-*"))
    again = train_tokenizer(iter_documents([str(corpus)]), 384, out, progress=False)
    reference = train_tokenizer(iter_documents([str(corpus)]), 384, tmp_path / "ref" / "tok", progress=False)
    assert again.content_hash == reference.content_hash
    assert not list(tmp_path.glob(".tmp-*"))  # the killed run's leftovers are gone


@pytest.mark.slow
@pytest.mark.parametrize("point,nth", [("shard", 1), ("shard", 3), ("fsync", 2), ("fsync", 6)])
def test_sigkill_while_preparing_the_dataset(tmp_path, corpus, clean, point, nth):
    out = tmp_path / "ds"
    _killed("dataset", point, nth, corpus, out)
    assert not out.exists()
    assert list(tmp_path.glob(".tmp-ds-*"))
    again = prepare_dataset([str(corpus)], out, vocab_size=384, val_fraction=0.1, workers=1, progress=False,
                            shard_tokens=2000)
    assert _files(again) == _files(clean)  # byte for byte what an uninterrupted run wrote
    assert load_manifest(again)["fingerprint"] == load_manifest(clean)["fingerprint"]
    assert not list(tmp_path.glob(".tmp-*"))
