"""Document sources: every format, normalization, replacement counting, and a clear DataError for bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from core.errors import DataError
from core.sources import SourceStats, iter_documents, parse_hf_spec, resolve_sources, stdlib_files


def docs_of(specs, **kw) -> list[str]:
    return list(iter_documents([str(s) for s in specs], **kw))


def test_text_files_directories_and_globs_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.md").write_text("two")
    (tmp_path / "b" / "1.txt").write_text("one")
    (tmp_path / "b" / "skip.bin").write_bytes(b"\0")  # unknown kinds inside a directory are not documents
    (tmp_path / "b" / ".hidden.txt").write_text("hidden")
    (tmp_path / "a.py").write_text("print(0)\n")
    assert docs_of([tmp_path / "b"]) == ["one", "two"]
    assert docs_of([tmp_path / "a.py", tmp_path / "b"]) == ["print(0)\n", "one", "two"]
    assert docs_of([f"{tmp_path}/**/*.md"]) == ["two"]


def test_jsonl_gz_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(tmp_path / "x.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": "gz one"}) + "\n\n" + json.dumps({"body": "gz two"}) + "\n")
    pq.write_table(pa.table({"body": ["pq one", "pq two"], "n": [1, 2]}), tmp_path / "y.parquet")
    assert docs_of([tmp_path / "x.jsonl.gz", tmp_path / "y.parquet"], text_field="body") == [
        "gz one", "gz two", "pq one", "pq two"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe end \xe2\x82")  # 2 stray bytes + 1 truncated 2-byte sequence
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "j\xff"}\n')
    stats = SourceStats()
    docs = list(iter_documents([str(tmp_path / "bad.txt"), str(tmp_path / "bad.jsonl")], stats=stats))
    assert docs == ["ok \ufffd\ufffd end \ufffd", "j\ufffd"]
    assert stats.replaced_bytes == 5
    assert stats.documents == 2


def test_lone_surrogates_from_json_escapes_are_replaced_and_counted(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "a\\ud800b"}\n')
    stats = SourceStats()
    assert list(iter_documents([str(tmp_path / "s.jsonl")], stats=stats)) == ["a\ufffdb"]
    assert stats.replaced_bytes == 1


def test_bom_stripped_and_newlines_normalized(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"\xef\xbb\xbfline1\r\nline2\rline3\n")
    (tmp_path / "w.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a\\r\\nb"}\r\n')
    assert docs_of([tmp_path / "w.txt", tmp_path / "w.jsonl"]) == ["line1\nline2\nline3\n", "a\nb"]


def test_empty_documents_are_skipped_and_counted(tmp_path):
    (tmp_path / "e.txt").write_text("")
    (tmp_path / "f.txt").write_text("x")
    stats = SourceStats()
    assert list(iter_documents([str(tmp_path)], stats=stats)) == ["x"]
    assert (stats.documents, stats.empty_documents) == (1, 1)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"does not exist: .*nope\.txt"):
        iter_documents([str(tmp_path / "nope.txt")])


def test_glob_without_matches(tmp_path):
    with pytest.raises(DataError, match=r"no files match .*\*\.txt"):
        iter_documents([f"{tmp_path}/*.txt"])


def test_unknown_source_kinds(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"unknown source kind for .*x\.csv"):
        iter_documents([str(tmp_path / "x.csv")])
    with pytest.raises(DataError, match="unknown source kind 's3'"):
        iter_documents(["s3://bucket/data"])
    with pytest.raises(DataError, match="unknown builtin source 'builtin:nope'"):
        iter_documents(["builtin:nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no source files"):
        iter_documents([str(tmp_path / "empty")])


def test_json_line_without_text_field_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"content": "no text key"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: no 'text' field"):
        docs_of([path])
    path.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' is int"):
        docs_of([path])
    path.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        docs_of([path])


def test_corrupt_gzip(tmp_path):
    data = gzip.compress(b'{"text": "x"}\n' * 1000)
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])  # truncated stream
    with pytest.raises(DataError, match=r"cannot read .*t\.jsonl\.gz"):
        docs_of([tmp_path / "t.jsonl.gz"])
    (tmp_path / "u.jsonl.gz").write_bytes(data[:20] + bytes(len(data) - 20))  # garbage after a valid header
    with pytest.raises(DataError, match=r"cannot read .*u\.jsonl\.gz"):
        docs_of([tmp_path / "u.jsonl.gz"])
    (tmp_path / "v.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*v\.jsonl\.gz"):
        docs_of([tmp_path / "v.jsonl.gz"])


def test_corrupt_parquet_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"cannot read parquet file .*bad\.parquet"):
        docs_of([tmp_path / "bad.parquet"])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match=r"nocol\.parquet: no 'text' column \(columns: body\)"):
        docs_of([tmp_path / "nocol.parquet"])


def test_parse_hf_spec():
    assert parse_hf_spec("hf:roneneldan/TinyStories") == ("roneneldan/TinyStories", None, "train")
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1@validation") == ("wikitext", "wikitext-2-raw-v1", "validation")
    with pytest.raises(DataError, match="bad Hugging Face source"):
        parse_hf_spec("hf:@train")


def test_hf_source_streams_through_the_datasets_package(monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "first\r\n"}, {"text": ""}, {"text": "second"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    stats = SourceStats()
    assert list(iter_documents(["hf:org/set:cfg@test"], stats=stats)) == ["first\n", "second"]
    assert calls == [("org/set", "cfg", "test", True)]
    assert stats.empty_documents == 1


def test_hf_source_errors(monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError("Dataset 'org/missing' doesn't exist on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    with pytest.raises(DataError, match=r"cannot load Hugging Face dataset hf:org/missing.*doesn't exist"):
        list(iter_documents(["hf:org/missing"]))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: [{"x": "y"}]))
    with pytest.raises(DataError, match="hf:org/x record 0: no 'text' field"):
        list(iter_documents(["hf:org/x"]))
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="needs the `datasets` package"):
        list(iter_documents(["hf:org/x"]))


def test_hf_spec_does_not_import_datasets_until_read(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert resolve_sources(["hf:org/x"])[0].kind == "hf"


def test_python_stdlib_files_exclude_tests_and_generated_data():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    rel = [f.relative_to(root).as_posix() for f in files]
    # top-down walk with sorted names: a folder's files first, then its subfolders, each in name order
    walk_key = lambda r: (*((1, d) for d in r.split("/")[:-1]), (0, r.split("/")[-1]))
    assert rel == sorted(rel, key=walk_key)
    assert "os.py" in rel and "json/decoder.py" in rel
    parts = {p for r in rel for p in r.split("/")[:-1]}
    assert not parts & {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    assert "pydoc_data/topics.py" not in rel and "encodings/cp1252.py" not in rel
    assert "encodings/utf_8.py" in rel  # a real codec module, not a generated table
    assert all(r.endswith(".py") for r in rel)
    assert files == stdlib_files()  # deterministic


def test_python_stdlib_documents():
    first = list(itertools.islice(iter_documents(["builtin:python-stdlib"]), 5))
    assert len(first) == 5
    assert all(isinstance(d, str) and d and "\r" not in d for d in first)


def test_hf_source_without_the_datasets_package(monkeypatch):
    """A datasets/ folder in the working directory imports as an empty namespace package: same clear error."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    with pytest.raises(DataError, match="needs the `datasets` package: pip install datasets"):
        list(iter_documents(["hf:some/corpus"]))
