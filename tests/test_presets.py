"""Every preset in configs/ loads, validates, and has the parameter count its first line states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from model import Transformer
from train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
_STATED = re.compile(r"^# params: ([0-9]+(?:\.[0-9]+)?)([MB])\s*$")


def stated_params(path: Path) -> float:
    """The count in the file's first line, `# params: 47.9M` or `# params: 1.236B`."""
    first = path.read_text().splitlines()[0]
    match = _STATED.match(first)
    assert match, f"{path.name}: first line must be '# params: <number>M' or '<number>B', got {first!r}"
    return float(match[1]) * {"M": 1e6, "B": 1e9}[match[2]]


def meta_model(path: Path) -> Transformer:
    """The preset's model on the meta device: shapes only, nothing allocated."""
    cfg = load_config(path)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    assert model.tok_embeddings.weight.is_meta
    return model


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert "tiny" in names and len(names) >= 2


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_param_count_matches_the_stated_one(path):
    stated = stated_params(path)
    actual = meta_model(path).num_params()
    assert abs(actual - stated) <= 0.01 * stated, f"{path.name}: {actual:,} parameters, file says {stated:,.0f}"


def test_tiny_preset_is_between_3m_and_10m():
    assert 3e6 <= meta_model(CONFIGS / "tiny.yaml").num_params() <= 10e6


def test_stated_count_parser():
    # The check above is only as good as this parser.
    assert _STATED.match("# params: 47.9M") and _STATED.match("# params: 1.236B")
    assert not _STATED.match("# parameters: 47.9M") and not _STATED.match("# params: 47.9")
