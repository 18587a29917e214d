"""DataLoader over memory-mapped shards: window geometry, determinism, exact resume, rank disjointness,
validation windows, compatibility checks. Synthetic datasets hold token = position, so a batch shows where it
came from."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.errors import DataError
from data.dataset import TokenDataset, check_compatible
from data.shards import FORMAT, HEADER_BYTES, MANIFEST, VERSION, SplitWriter
from train.dataloader import DataLoader
from train.trainer import Trainer, train

from .conftest import tiny_config

VOCAB = 1 << 20  # > 65,536, so the synthetic shards are uint32 and can hold positions


def make_dataset(directory: Path, train_tokens: int, val_tokens: int, shard_tokens: int = 10_000,
                 fingerprint: str = "f" * 64) -> TokenDataset:
    """A dataset whose split streams are 0, 1, 2, ... (documents of 37 tokens), as prepare_dataset lays it out."""
    directory.mkdir(parents=True)
    shards = []
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        writer = SplitWriter(directory, split, np.dtype("<u4"), shard_tokens)
        lengths = np.full(n // 37, 37)
        if n % 37:
            lengths = np.append(lengths, n % 37)
        writer.add(np.arange(n, dtype=np.uint32), lengths)
        shards += writer.close()
    manifest = {
        "format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "dtype": "uint32",
        "header_bytes": HEADER_BYTES, "shards": shards, "vocab_size": VOCAB, "eos_id": 2,
        "tokenizer": {"hash": "a" * 64, "vocab_size": VOCAB, "path": "tokenizer"},
        "tokens": {"train": train_tokens, "val": val_tokens, "total": train_tokens + val_tokens},
        "source_bytes": {"train": 3 * train_tokens, "val": 2 * val_tokens, "total": 3 * train_tokens + 2 * val_tokens},
        "bytes_per_token": {"train": 3.0, "val": 2.0 if val_tokens else None,
                            "total": (3 * train_tokens + 2 * val_tokens) / (train_tokens + val_tokens)},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return TokenDataset(directory)


@pytest.fixture
def dataset(tmp_path) -> TokenDataset:
    # 60 windows of 17 tokens (seq_len 16) + 5 spare tokens; small shards so windows cross shard boundaries
    return make_dataset(tmp_path / "ds", train_tokens=60 * 17 + 5, val_tokens=40 * 17, shard_tokens=100)


def starts(batch: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
    return batch[0][:, 0].tolist()


def test_batches_are_shifted_aligned_windows(dataset):
    loader = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=0)
    for _ in range(20):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # y is x shifted by one token
        assert torch.equal(x, x[:, :1] + torch.arange(16))  # one contiguous window, even across shard boundaries
        assert all(s % 17 == 0 for s in starts((x, y)))  # non-overlapping windows of seq_len + 1


def test_an_epoch_visits_each_window_once_in_a_seeded_order(dataset):
    loader = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=3)
    assert (loader.n_windows, loader.batches_per_epoch) == (60, 15)
    epochs = [[s for _ in range(15) for s in starts(loader.next_batch())] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == [17 * i for i in range(60)]
    assert epochs[0] != epochs[1]  # a new permutation each epoch
    again = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=3)
    assert [s for _ in range(15) for s in starts(again.next_batch())] == epochs[0]
    other = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=4)
    assert [s for _ in range(15) for s in starts(other.next_batch())] != epochs[0]


@pytest.mark.parametrize("taken", [0, 7, 15, 22])
def test_resume_gives_the_same_next_batches(dataset, taken):
    straight = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=1)
    for _ in range(taken):
        straight.next_batch()
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=999)  # the saved seed wins
    resumed.load_state_dict(state)
    for _ in range(20):  # crosses an epoch boundary
        a, b = straight.next_batch(), resumed.next_batch()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ranks_never_share_a_window(dataset):
    world = 3
    loaders = [DataLoader(dataset, micro_batch_size=2, seq_len=16, seed=0, rank=r, world_size=world)
               for r in range(world)]
    assert loaders[0].batches_per_epoch == 10
    seen = [[s for _ in range(10) for s in starts(loader.next_batch())] for loader in loaders]
    sets = [set(s) for s in seen]
    assert all(len(s) == 20 for s in sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == 60  # together they cover the epoch


def test_resume_on_a_different_world_size_continues_the_same_windows(dataset):
    ranks = [DataLoader(dataset, micro_batch_size=2, seq_len=16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for loader in ranks:
            loader.next_batch()
    expected = sorted(s for loader in ranks for s in starts(loader.next_batch()))
    ranks = [DataLoader(dataset, micro_batch_size=2, seq_len=16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for loader in ranks:
            loader.next_batch()
    single = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=5)
    single.load_state_dict(ranks[0].state_dict())
    assert sorted(starts(single.next_batch())) == expected


def test_load_state_dict_rejects_a_position_that_does_not_fit(dataset, tmp_path):
    loader = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=0)
    loader.next_batch()
    state = loader.state_dict()
    assert all(isinstance(v, (int, str)) for v in state.values())
    with pytest.raises(DataError, match="seq_len 16, this run uses 8"):
        DataLoader(dataset, micro_batch_size=4, seq_len=8).load_state_dict(state)
    with pytest.raises(DataError, match="not a whole number of micro batches"):
        DataLoader(dataset, micro_batch_size=3, seq_len=16).load_state_dict(state)
    other = make_dataset(tmp_path / "other", 60 * 17 + 5, 40 * 17, fingerprint="0" * 64)
    with pytest.raises(DataError, match="belongs to another dataset"):
        DataLoader(other, micro_batch_size=4, seq_len=16).load_state_dict(state)


def test_validation_windows_are_fixed_disjoint_and_spread(dataset):
    loaders = [DataLoader(dataset, micro_batch_size=2, seq_len=16, seed=r, rank=r, world_size=2) for r in range(2)]
    first = [[starts(b) for b in loader.validation_batches(5)] for loader in loaders]
    loaders[0].next_batch()  # training progress does not move the validation windows
    assert [starts(b) for b in loaders[0].validation_batches(5)] == first[0]
    flat = [[s for batch in rank for s in batch] for rank in first]
    assert len(first[0]) == len(first[1]) == 5
    assert not set(flat[0]) & set(flat[1])
    assert all(s % 17 == 0 for s in flat[0] + flat[1])
    assert max(flat[0] + flat[1]) >= 17 * 35  # spread over the whole val stream, not only its start
    x, y = next(loaders[0].validation_batches(1))
    assert torch.equal(y, x + 1)
    # 40 val windows / (2 x 2) per step = 10 batches at most
    assert len(list(loaders[1].validation_batches(100))) == 10


def test_a_val_split_smaller_than_one_micro_batch_gives_one_smaller_batch(tmp_path):
    small = make_dataset(tmp_path / "small", train_tokens=60 * 17, val_tokens=5 * 17 + 3)  # 5 val windows
    loaders = [DataLoader(small, micro_batch_size=8, seq_len=16, rank=r, world_size=2) for r in range(2)]
    batches = [list(loader.validation_batches(4)) for loader in loaders]
    assert [[starts(b) for b in rank] for rank in batches] == [[[0, 34]], [[17, 51]]]  # 2 per rank, disjoint
    x, y = batches[0][0]
    assert x.shape == (2, 16) and torch.equal(y, x + 1)
    one = DataLoader(small, micro_batch_size=8, seq_len=16)
    assert [starts(b) for b in one.validation_batches(4)] == [[0, 17, 34, 51, 68]]  # every window, once


def test_split_too_small_is_a_clear_error(tmp_path):
    small = make_dataset(tmp_path / "small", train_tokens=100, val_tokens=10)
    with pytest.raises(DataError, match=r"train split .* fewer than one micro batch"):
        DataLoader(small, micro_batch_size=8, seq_len=16)
    loader = DataLoader(small, micro_batch_size=1, seq_len=16)
    with pytest.raises(DataError, match=r"val split .* fewer than one window of 17 tokens .* raise data.val_fraction"):
        list(loader.validation_batches(2))


def test_bytes_per_token(dataset):
    assert dataset.bytes_per_token("train") == 3.0
    assert dataset.bytes_per_token("val") == 2.0
    assert dataset.num_tokens("val") == 40 * 17


def test_check_compatible(dataset):
    good = SimpleNamespace(content_hash="a" * 64, vocab_size=VOCAB, eos_id=2, directory=Path("tok"))
    check_compatible(dataset, good, VOCAB)
    check_compatible(dataset, good, VOCAB + 64)  # a padded embedding is fine
    with pytest.raises(DataError, match=r"tokenized with tokenizer aaaaaaaaaaaa.*is bbbbbbbbbbbb"):
        check_compatible(dataset, SimpleNamespace(**{**vars(good), "content_hash": "b" * 64}), VOCAB)
    with pytest.raises(DataError, match=r"model.vocab_size \(1000\) is smaller"):
        check_compatible(dataset, good, 1000)


def test_missing_or_damaged_dataset(tmp_path, dataset):
    with pytest.raises(DataError, match="not a prepared dataset"):
        TokenDataset(tmp_path / "nothing")
    shard = dataset.directory / dataset.manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(DataError, match="header promises"):
        TokenDataset(dataset.directory)


def test_end_to_end_with_a_real_tokenizer(tmp_path):
    from data.prepare_data import prepare_dataset
    from Tokenizer import Tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "value", "index", "total", "print", "range", "lambda", "yield"]
    for i in range(40):
        body = "".join(f"    {rng.choice(words)}_{rng.integers(100)} = {rng.choice(words)}({i})\n" for _ in range(20))
        (corpus / f"{i:02d}.txt").write_text(f"def f{i}(x):\n{body}    return x * {i}\n")
    out = prepare_dataset([str(corpus)], tmp_path / "ds", vocab_size=400, val_fraction=0.0, workers=1,
                          progress=False)
    tok, ds = Tokenizer.load(out / "tokenizer"), TokenDataset(out)
    check_compatible(ds, tok, 400)
    loader = DataLoader(ds, micro_batch_size=2, seq_len=32, seed=0)
    x, y = loader.next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = "".join(p.read_text() for p in sorted(corpus.iterdir()))  # EOS decodes to nothing
    for row in range(2):
        assert tok.decode(x[row].tolist() + y[row, -1:].tolist()) in text
    assert int(x.max()) < tok.vocab_size


def _step_windows(dataset, world: int, micro: int, steps: int, batch: int = 8, state: dict | None = None):
    """Sorted window starts of each optimizer step of `batch` sequences, over all ranks, and the end state."""
    loaders = [DataLoader(dataset, micro_batch_size=micro, seq_len=16, seed=7, rank=r, world_size=world)
               for r in range(world)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    accum = batch // (micro * world)
    out = [sorted(s for _ in range(accum) for loader in loaders for s in starts(loader.next_batch()))
           for _ in range(steps)]
    return out, loaders[0].state_dict()


def test_each_step_takes_the_same_windows_whatever_the_world_size_even_across_epochs(dataset):
    # 60 windows and 8 per step: steps 8, 15 and 23 straddle epoch boundaries (a micro batch may too).
    reference, _ = _step_windows(dataset, world=1, micro=8, steps=24)
    for world, micro in [(2, 2), (4, 1), (1, 4), (2, 4)]:
        assert _step_windows(dataset, world, micro, steps=24)[0] == reference, (world, micro)
    # A position saved by 2 ranks inside epoch 1 (4 windows into it) resumes on 1 rank and on 4 ranks.
    _, state = _step_windows(dataset, world=2, micro=2, steps=8)
    assert (state["epoch"], state["consumed"]) == (1, 4)
    assert _step_windows(dataset, world=1, micro=8, steps=16, state=state)[0] == reference[8:]
    assert _step_windows(dataset, world=4, micro=2, steps=16, state=state)[0] == reference[8:]


def test_shifted_windows_move_every_later_epoch_and_wrap_around(dataset):
    """shift_windows: epoch 0 is the plain loader's; each later epoch's windows start at a seeded offset in
    [0, 17) and read the stream as a circle, still one contiguous window each, all 60 of them."""
    n = 60 * 17 + 5
    shifted = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=3, shift_windows=True)
    plain = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=3)
    offsets, wrapped = [], 0
    for epoch in range(8):
        batches = [shifted.next_batch() for _ in range(15)]
        plain_starts = [s for _ in range(15) for s in starts(plain.next_batch())]
        offset = shifted.offset(epoch)
        offsets.append(offset)
        assert 0 <= offset < 17 and (epoch > 0 or offset == 0)
        assert sorted(s for b in batches for s in starts(b)) == [offset + 17 * i for i in range(60)]
        assert [s - offset for b in batches for s in starts(b)] == plain_starts  # the same order of windows
        for x, y in batches:
            assert torch.equal(x, (x[:, :1] + torch.arange(16)) % n)
            assert torch.equal(y, (x + 1) % n)
            wrapped += int((x[:, 0] + 16 >= n).sum())
    assert len(set(offsets[1:])) > 1  # the offset changes from epoch to epoch
    assert wrapped == sum(o > 5 for o in offsets)  # the last window wraps when the offset passes the 5 spare tokens
    again = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=3, shift_windows=True)
    other = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=4, shift_windows=True)
    assert [again.offset(e) for e in range(8)] == offsets != [other.offset(e) for e in range(8)]


def test_shifted_windows_resume_exactly_and_stay_as_the_run_began(dataset):
    straight = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=1, shift_windows=True)
    for _ in range(22):  # into the second epoch
        straight.next_batch()
    state = straight.state_dict()
    resumed = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=1)  # the saved setting wins
    resumed.load_state_dict(state)
    for _ in range(40):  # across two more epoch boundaries
        a, b = straight.next_batch(), resumed.next_batch()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    old = {k: v for k, v in state.items() if k != "shift_windows"}  # a state saved before the option existed
    resumed = DataLoader(dataset, micro_batch_size=4, seq_len=16, seed=1, shift_windows=True)
    resumed.load_state_dict(old)
    assert not resumed.shift_windows and all(s % 17 == 0 for _ in range(30) for s in starts(resumed.next_batch()))


@pytest.mark.parametrize("shift", [False, True])
def test_the_trainer_passes_train_shift_windows_to_its_loader(tmp_path, tiny_data, shift):
    cfg = tiny_config(tmp_path / "run", tiny_data, *(["train.shift_windows=true"] if shift else []))
    assert Trainer(cfg).loader.shift_windows is shift


def test_a_resumed_run_keeps_its_windows_and_says_so(tmp_path, tiny_data, capsys):
    args = ("train.max_steps=4", "train.save_interval=2", "train.eval_interval=2", "train.stop_at_step=2")
    train(tiny_config(tmp_path / "run", tiny_data, *args))
    capsys.readouterr()
    resumed = Trainer(tiny_config(tmp_path / "run", tiny_data, *args[:3], "train.shift_windows=true"))
    assert resumed.step == 2 and resumed.loader.shift_windows is False
    assert "train.shift_windows=true is ignored" in capsys.readouterr().out
