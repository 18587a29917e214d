"""Shard file format: dtype choice at the 65,536 boundary, header round trip, whole documents per shard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataError
from data.shards import HEADER_BYTES, SplitWriter, open_shard, pack_header, read_header, token_dtype


def test_dtype_boundary():
    assert token_dtype(1) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0..65535 all fit in 16 bits
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(2**32) == np.uint32
    with pytest.raises(DataError):
        token_dtype(2**32 + 1)


@pytest.mark.parametrize("vocab_size", [65_536, 65_537])
def test_header_round_trip(tmp_path, vocab_size):
    dtype = token_dtype(vocab_size)
    tokens = np.array([0, 1, 65_535, vocab_size - 1, 2], dtype=dtype)
    writer = SplitWriter(tmp_path, "train", dtype, shard_tokens=100)
    writer.add(tokens, np.array([2, 3]))
    (entry,) = writer.close()
    path = tmp_path / entry["file"]
    assert read_header(path) == (dtype, 5)
    assert path.stat().st_size == HEADER_BYTES + 5 * dtype.itemsize
    assert open_shard(path).tolist() == tokens.tolist()
    assert entry == {"file": "train_000000.bin", "split": "train", "tokens": 5, "documents": 2}


def test_bad_headers(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"short")
    with pytest.raises(DataError, match="truncated"):
        read_header(path)
    path.write_bytes(b"NOTMAGIC" + bytes(24))
    with pytest.raises(DataError, match="not a token shard"):
        read_header(path)
    path.write_bytes(pack_header(np.dtype("<u2"), 10) + bytes(8))  # 4 tokens where the header says 10
    with pytest.raises(DataError, match="header promises"):
        read_header(path)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40), shard_tokens=st.integers(1, 60),
       split_at=st.integers(0, 40))
def test_writer_keeps_documents_whole(tmp_path_factory, lengths, shard_tokens, split_at):
    out = tmp_path_factory.mktemp("shards")
    lengths = np.array(lengths)
    tokens = np.arange(lengths.sum(), dtype=np.uint16)
    writer = SplitWriter(out, "val", np.dtype("<u2"), shard_tokens)
    cut = int(lengths[:split_at].sum())  # the same documents added in two calls
    writer.add(tokens[:cut], lengths[:split_at])
    writer.add(tokens[cut:], lengths[split_at:])
    shards = writer.close()
    assert np.concatenate([open_shard(out / s["file"]) for s in shards]).tolist() == tokens.tolist()
    assert sum(s["documents"] for s in shards) == len(lengths)
    ends = set(np.cumsum(lengths).tolist())
    position = 0
    for i, s in enumerate(shards):
        position += s["tokens"]
        assert position in ends  # every shard ends at a document boundary
        if i < len(shards) - 1:
            assert s["tokens"] >= shard_tokens  # only the last shard may be short
            assert s["tokens"] - shard_tokens < max(lengths)  # and none overshoots by more than one document
