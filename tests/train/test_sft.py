"""Supervised fine-tuning: conversation datasets, packed batches with masked targets, the loss over the global
batch's assistant tokens, and fine-tuning a pretrained checkpoint through the training loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import DataError, SourceError
from data.chat_dataset import ChatDataset, held_out, prepare_chat_dataset
from model.checkpoint import load_model
from model.loss import IGNORE_INDEX
from tests.train.sft_fixtures import TOPICS, ChatSetup, chat_config, make_chat_setup
from Tokenizer import load_tokenizer
from Tokenizer.chat import encode_chat_for_training
from train.sft import ChatLoader, pack_rows
from train.trainer import train


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory, tiny_data) -> ChatSetup:
    return make_chat_setup(tmp_path_factory.mktemp("sft"), tiny_data)


@pytest.fixture(scope="module")
def chat_dataset(chat_setup) -> ChatDataset:
    tokenizer = load_tokenizer(chat_setup.data.tokenizer_dir)
    out = prepare_chat_dataset([str(chat_setup.conversations)], chat_setup.root / "ds", tokenizer, 0.2,
                               info=lambda _: None)
    return ChatDataset(out)


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the dataset -----------------------------------------------------------------------------------------------


def test_dataset_holds_each_conversation_as_the_chat_template_encodes_it(chat_setup, chat_dataset):
    tokenizer = load_tokenizer(chat_setup.data.tokenizer_dir)
    rows = rows_of(chat_setup.conversations)
    counters = {"train": 0, "val": 0}
    for row in rows:
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]},
                                           {"role": "assistant", "content": row["completion"]}]
        split = "val" if held_out(row["topic"], 0.2) else "train"
        ids, targets = chat_dataset.conversation(split, counters[split])
        expected_ids, expected_targets = encode_chat_for_training(tokenizer, messages)
        assert ids.tolist() == expected_ids and targets.tolist() == expected_targets
        counters[split] += 1
    assert counters == {s: chat_dataset.num_conversations(s) for s in ("train", "val")}
    topics = chat_dataset.manifest["splits"]
    assert topics["val"]["topics"] and not set(topics["val"]["topics"]) & set(topics["train"]["topics"])
    assert set(topics["val"]["topics"]) | set(topics["train"]["topics"]) == set(TOPICS)


def test_preparing_again_is_a_no_op_and_other_inputs_are_refused(chat_setup, chat_dataset):
    tokenizer = load_tokenizer(chat_setup.data.tokenizer_dir)
    before = (chat_dataset.directory / "manifest.json").stat().st_mtime_ns
    prepare_chat_dataset([str(chat_setup.conversations)], chat_dataset.directory, tokenizer, 0.2, info=print)
    assert (chat_dataset.directory / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match=r"data.dataset_dir .* other sources"):
        prepare_chat_dataset([str(chat_setup.conversations)], chat_dataset.directory, tokenizer, 0.3)


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"bad.jsonl:2: field 'messages' has no assistant turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', r"bad.jsonl:2: messages\[0\].role must be one of"),
    ('{"messages": [{"role": "assistant", "content": 3}]}', r"bad.jsonl:2: messages\[0\].content must be a string"),
    ('{"prompt": "hi", "completion": null}', r"bad.jsonl:2: field 'completion' must be a string"),
    ('{"text": "hi"}', r"bad.jsonl:2: a conversation row needs a 'messages' list"),
    ('{"messages": [', r"bad.jsonl:2: invalid JSON"),
])
def test_a_malformed_row_names_file_line_and_field(tmp_path, chat_setup, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    tokenizer = load_tokenizer(chat_setup.data.tokenizer_dir)
    with pytest.raises(SourceError, match=message):
        prepare_chat_dataset([str(bad)], tmp_path / "out", tokenizer, 0.0)
    assert not (tmp_path / "out").exists()


# ---- batches -------------------------------------------------------------------------------------------------------


def test_an_epoch_packs_every_training_conversation_once_with_its_targets(chat_dataset):
    loader = ChatLoader(chat_dataset, micro_batch_size=2, seq_len=64, seed=3)
    rows = loader._rows(0)
    assert sorted(i for row in rows for i in row) == list(range(chat_dataset.num_conversations("train")))
    lengths = np.minimum(chat_dataset.lengths("train"), 64)  # a longer conversation is cut to a row
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # Next-fit packing fills rows: fewer rows than conversations, most of each row real tokens.
    assert len(rows) < 0.7 * chat_dataset.num_conversations("train")
    assert lengths.sum() / (64 * len(rows)) > 0.6
    _, y, doc = loader._batch("train", rows[:2])
    for b, row in enumerate(rows[:2]):
        expected = sum(int(chat_dataset.conversation("train", i)[1][1:].sum()) for i in row)
        assert int((y[b] != IGNORE_INDEX).sum()) == expected
        assert doc[b, : sum(lengths[i] for i in row)].unique().numel() == len(row)


def test_loader_resumes_exactly(chat_dataset):
    a = ChatLoader(chat_dataset, micro_batch_size=4, seq_len=64, seed=1)
    for _ in range(7):
        a.next_batch()
    b = ChatLoader(chat_dataset, micro_batch_size=4, seq_len=64, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(80):  # across an epoch boundary (~280 rows of 4 per micro batch)
        for got, expected in zip(b.next_batch(), a.next_batch(), strict=True):
            assert torch.equal(got, expected)
    assert a.epoch >= 1


def test_ranks_share_out_the_rows_of_one_process(chat_dataset):
    one = ChatLoader(chat_dataset, micro_batch_size=4, seq_len=64, seed=1)
    ranks = [ChatLoader(chat_dataset, micro_batch_size=2, seq_len=64, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(5):
        x, _, _ = one.next_batch()
        r0, r1 = (loader.next_batch()[0] for loader in ranks)
        assert torch.equal(x[0::2], r0) and torch.equal(x[1::2], r1)


def test_padding_puts_one_conversation_per_row():
    rows = pack_rows(np.array([10, 70, 5]), np.array([2, 0, 1]), seq_len=64, pack=False)
    assert rows == [[2], [0], [1]]
    assert pack_rows(np.array([10, 70, 5]), np.array([2, 0, 1]), seq_len=64, pack=True) == [[2, 0], [1]]


@torch.no_grad()
def test_a_packed_batch_gives_each_conversation_its_loss_alone(chat_setup, chat_dataset):
    model, _ = load_model(chat_setup.base)
    model.eval()
    loader = ChatLoader(chat_dataset, micro_batch_size=2, seq_len=64, seed=0)
    rows = loader._rows(0)[:2]
    x, y, doc = loader._batch("train", rows)
    logits = model(x, doc_ids=doc)
    per_token = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    masked_without_docs = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            ids, targets = chat_dataset.conversation("train", i)
            n = len(ids)
            alone = model(torch.from_numpy(ids)[None])[0]
            t = torch.from_numpy(np.where(targets[1:], ids[1:], IGNORE_INDEX))
            loss_alone = F.cross_entropy(alone[:-1], t, reduction="sum")
            torch.testing.assert_close(per_token[b, start : start + n - 1].sum(), loss_alone, rtol=1e-5, atol=1e-4)
            start += n
    assert not torch.allclose(masked_without_docs, per_token, atol=1e-3)  # the mask matters in these rows


# ---- the objective --------------------------------------------------------------------------------------------------


def _engine(chat_setup, cfg):
    from train.engine import build_engine
    from train.parallel import World, resolve_plan

    engine = build_engine(cfg, resolve_plan(cfg.train, World()), chat_setup.base / "checkpoints" / "step_0000004")
    # SGD: the update is -lr * grad, so equal parameters after a step mean equal gradients (AdamW's first step is
    # about lr * sign(grad), which would turn rounding noise on near-zero gradients into differences of lr).
    engine.optimizer = torch.optim.SGD(engine.raw_model.parameters(), lr=0.5)
    return engine


def test_four_micro_batches_of_two_update_like_one_of_eight(chat_setup, chat_dataset):
    """Micro batches with very different numbers of assistant tokens: weighting each summed loss by
    1 / (targets of the whole batch) gives the update of one big batch; a mean of per-micro-batch means does not."""
    from train.engine import count_targets, summed_next_token_loss

    cfg = chat_config(chat_setup, chat_setup.root / "unused", "optim.grad_clip=0")
    loader = ChatLoader(chat_dataset, micro_batch_size=8, seq_len=64, seed=0, pack=False)
    big = loader.next_batch()
    order = torch.argsort((big[1] != IGNORE_INDEX).sum(1))  # sort rows so micro batches differ the most
    big = tuple(t[order] for t in big)
    small = [tuple(t[i : i + 2] for t in big) for i in range(0, 8, 2)]
    counts = [count_targets(b) for b in small]
    assert max(counts) > 2 * min(counts) > 0
    total = sum(counts)

    one = _engine(chat_setup, cfg)
    r1 = one.train_step([big], summed_next_token_loss, [1 / total])
    four = _engine(chat_setup, cfg)
    r4 = four.train_step(small, summed_next_token_loss, [1 / total] * 4)
    means = _engine(chat_setup, cfg)
    means.train_step(small)  # the default: each micro batch's mean, averaged
    assert r1.loss == pytest.approx(r4.loss, rel=1e-5)
    for (name, p1), p4 in zip(one.raw_model.named_parameters(), four.raw_model.parameters(), strict=True):
        torch.testing.assert_close(p4, p1, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.allclose(pm, p1, atol=1e-6) for p1, pm in zip(one.raw_model.parameters(),
                                                                        means.raw_model.parameters(), strict=True))


# ---- the loop -------------------------------------------------------------------------------------------------------


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_fine_tuning_lowers_the_held_out_assistant_loss_and_resumes_exactly(chat_setup, tmp_path):
    result = train(chat_config(chat_setup, tmp_path / "full"))
    records = read_metrics(tmp_path / "full")
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 12] and "val_bpb" not in evals[0]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.final_val_loss == evals[-1]["val_loss"]
    _, ckpt = load_model(tmp_path / "full")
    assert ckpt.name == "step_0000012" and (ckpt / "tokenizer").is_dir()

    train(chat_config(chat_setup, tmp_path / "split", "train.stop_at_step=6"))
    train(chat_config(chat_setup, tmp_path / "split"))
    full = {r["step"]: r["loss"] for r in records if "loss" in r}
    split = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert split == pytest.approx(full, abs=1e-6)


def test_chat_needs_a_tokenizer_with_markers(chat_setup, tmp_path):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.format=chat needs a tokenizer"):
        chat_config(chat_setup, tmp_path / "x", "train.init_from=null")


def test_chat_accuracy_asks_held_out_questions_and_applies_the_rule(chat_setup, tmp_path):
    import subprocess
    import sys

    from data.stdlib_chat import answer_is_right

    out = tmp_path / "acc.json"
    script = Path(__file__).resolve().parents[2] / "scripts" / "chat_accuracy.py"
    args = ["--checkpoint", str(chat_setup.base), "--limit", "3", "--max-new-tokens", "8", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["questions"] == len(result["replies"]) == 3 and result["split"] == "val"
    for r in result["replies"]:
        assert r["right"] == answer_is_right(r["reply"], r["name"], r["expected"])
    assert f"{result['right']}/3 signature questions about held-out modules" in proc.stdout


def test_hf_conversation_rows_stream_through_the_datasets_package(monkeypatch):
    import sys
    import types

    from data.conversations import iter_conversations, resolve_chat_sources

    rows = [{"prompt": "hi", "completion": "hello", "topic": "greet"},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}]
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    conversations = iter_conversations(resolve_chat_sources(["hf:org/chats:default@test"]))
    first = next(conversations)
    assert first.messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    assert first.topic == "greet" and calls == [("org/chats", "default", "test", True)]
    with pytest.raises(SourceError, match=r"hf:org/chats:default@test record 1: messages\[1\].content"):
        next(conversations)


def test_the_loop_weights_micro_batches_by_their_targets(chat_setup, tmp_path):
    """Two micro batches of 4 per step log the losses and reach the weights of one micro batch of 8: the loop
    weights each by world size / the step's target count (a mean of per-micro-batch means would differ)."""
    run = ("train.max_steps=3", "train.save_interval=3", "train.eval_interval=3", "train.sample_tokens=0",
           "data.pack=false", "optim.grad_clip=0")
    train(chat_config(chat_setup, tmp_path / "one", *run, "train.micro_batch_size=8"))
    train(chat_config(chat_setup, tmp_path / "two", *run, "train.micro_batch_size=4"))
    one = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r}
    two = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "two") if "loss" in r}
    assert one == pytest.approx(two, abs=1e-5) and sorted(one) == [1, 2, 3]
    (a, _), (b, _) = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=5e-5, msg=name)
