"""Local lm-evaluation-harness tasks for tests: a task YAML over a jsonl file beside it (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_task(directory: Path, name: str, docs: list[dict], cache: Path, **fields) -> None:
    """`name`.yaml and `name`.jsonl in `directory`: the task reads the documents as its test split, and the
    datasets library caches them under `cache`. `fields` are the task's other keys (output_type, doc_to_text...)."""
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    config = {
        "task": name, "dataset_path": "json", "test_split": "test",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache)}, **fields,
    }
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
