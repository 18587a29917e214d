"""End-to-end training on a tiny corpus: learning, accumulation, exact resume, checkpoints, health checks."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import astuple
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError, ConfigError, DataError
from model import Transformer
from model.checkpoint import find_checkpoint, load_model
from train import engine as engine_mod
from train.checkpoint import load_run_config, load_training_state
from train.engine import Engine
from train.optim import lr_at
from train.parallel import Plan, World
from train.trainer import Trainer, TrainingStopped, train

from .conftest import tiny_config


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def deterministic(records: list[dict]) -> list[dict]:
    """Records without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "mfu")} for r in records]


@pytest.mark.slow
def test_tiny_run_learns(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=80", "train.eval_interval=40",
                      "train.save_interval=40", "optim.warmup_steps=5")
    result = train(cfg)
    assert result.step == 80
    evals = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [40, 80]
    ln_vocab = math.log(tiny_data.vocab_size)
    assert evals[-1]["val_loss"] < 0.5 * ln_vocab  # well below chance (5.95 nats for 384 ids)
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert 0 < evals[-1]["val_bpb"] < evals[-1]["val_loss"] / math.log(2)  # > 1 byte per token
    train_records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_sec"} <= set(train_records[0])
    assert "mfu" not in train_records[0]  # CPU: no MFU rather than a wrong one
    # The run directory holds the resolved config and a loadable final checkpoint with the tokenizer.
    assert (tmp_path / "run" / "config.yaml").is_file()
    model, ckpt_dir = load_model(tmp_path / "run")
    assert ckpt_dir.name == "step_0000080" and model.cfg == cfg.model and load_run_config(ckpt_dir) == cfg
    assert (ckpt_dir / "tokenizer" / "tokenizer.model").is_file()


def _model_and_engine(cfg, seed=0):
    """A model and its engine with plain SGD, whose update is -lr * grad: comparing updates compares the
    accumulated gradients. (AdamW's first update is about lr * sign(grad), which turns float-rounding noise in
    near-zero gradients into lr-sized differences.)"""
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plan = Plan(World(), torch.device("cpu"), "none", "fp32")
    return model, Engine(model, model, opt, plan, cfg.optim.grad_clip)


def test_accumulation_matches_one_big_batch(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path, tiny_data)
    torch.manual_seed(1)
    tokens = torch.randint(0, cfg.model.vocab_size, (8, 33))
    x, y = tokens[:, :-1], tokens[:, 1:]
    big_model, big = _model_and_engine(cfg)
    small_model, small = _model_and_engine(cfg)
    for _ in range(3):
        loss_big, norm_big, _ = astuple(big.train_step([(x, y)]))
        loss_small, norm_small, _ = astuple(small.train_step([(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]))
        assert loss_small == pytest.approx(loss_big, abs=1e-5)
        assert norm_small == pytest.approx(norm_big, rel=1e-5)
    for (name, a), b in zip(big_model.named_parameters(), small_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name


def test_accumulation_end_to_end_same_losses(tmp_path, tiny_data):
    one = tiny_config(tmp_path / "one", tiny_data, "train.max_steps=4", "train.sample_tokens=0")
    four = tiny_config(tmp_path / "four", tiny_data, "train.max_steps=4", "train.micro_batch_size=2",
                       "train.sample_tokens=0")
    train(one)
    train(four)
    a = [r for r in read_metrics(tmp_path / "one") if "loss" in r]
    b = [r for r in read_metrics(tmp_path / "four") if "loss" in r]
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
    # Evaluation covers the same windows however the batch is split into micro batches.
    val_a = [r["val_loss"] for r in read_metrics(tmp_path / "one") if "val_loss" in r]
    val_b = [r["val_loss"] for r in read_metrics(tmp_path / "four") if "val_loss" in r]
    assert len(val_a) == 1 and val_b == pytest.approx(val_a, abs=1e-5)


def test_exact_resume(tmp_path, tiny_data):
    """2N steps in one go and N steps + resume to 2N give identical per-step losses (dropout on: RNG restored)."""
    args = ("train.max_steps=12", "train.eval_interval=6", "train.save_interval=6", "model.dropout=0.1")
    whole = tiny_config(tmp_path / "whole", tiny_data, *args)
    train(whole)
    first = tiny_config(tmp_path / "split", tiny_data, *args, "train.stop_at_step=6")
    assert train(first).step == 6
    second = tiny_config(tmp_path / "split", tiny_data, *args)  # resume: auto
    assert train(second).step == 12
    expected = deterministic(read_metrics(tmp_path / "whole"))
    got = deterministic(read_metrics(tmp_path / "split"))
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    assert got == expected  # equality, not tolerance
    weights_a, _ = load_model(tmp_path / "whole")
    weights_b, _ = load_model(tmp_path / "split")
    for a, b in zip(weights_a.state_dict().values(), weights_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_retention_and_state(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=8", "train.save_interval=2",
                      "train.eval_interval=2", "train.keep_last=2", "train.sample_tokens=0")
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    steps = sorted(p.name for p in ckpts.glob("step_*"))
    best = (ckpts / "best").read_text().strip()
    assert steps[-2:] == ["step_0000006", "step_0000008"]
    assert set(steps) == {"step_0000006", "step_0000008", best}
    assert (ckpts / "latest").read_text().strip() == "step_0000008"
    state = load_training_state(ckpts / "step_0000008")  # weights_only=True
    assert state["step"] == 8 and state["tokens_seen"] == 8 * 8 * 32
    assert {"optimizer", "scaler", "scheduler", "loader", "rng"} <= set(state)
    assert not list(ckpts.glob(".tmp-*"))


def test_resume_never_refuses_non_empty_out_dir(tmp_path, tiny_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ConfigError, match=r"train\.resume=never"):
        train(tiny_config(out, tiny_data, "train.resume=never"))


def test_resume_from_explicit_path_and_model_mismatch(tmp_path, tiny_data):
    train(tiny_config(tmp_path / "a", tiny_data, "train.max_steps=4", "train.save_interval=2",
                      "train.sample_tokens=0"))
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000002"
    result = train(tiny_config(tmp_path / "b", tiny_data, "train.max_steps=4", f"train.resume={ckpt}",
                               "train.sample_tokens=0"))
    assert result.step == 4
    assert [r["step"] for r in read_metrics(tmp_path / "b") if "loss" in r] == [3, 4]
    arch_error = r"different model architecture: dim 64 \(checkpoint\) != 32 \(model\.dim\)"
    with pytest.raises(CheckpointError, match=arch_error):
        train(tiny_config(tmp_path / "c", tiny_data, "model.dim=32", f"train.resume={ckpt}"))
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config(tmp_path / "d", tiny_data, f"train.resume={tmp_path / 'nope'}"))


def test_non_finite_steps_are_skipped_then_stop(tmp_path, tiny_data, monkeypatch):
    calls = {"n": 0}
    real = engine_mod.next_token_loss

    def flaky(model, batch, **kwargs):  # NaN on step 3, then on every step from 6 on
        calls["n"] += 1
        loss = real(model, batch, **kwargs)
        return loss * float("nan") if calls["n"] == 3 or calls["n"] >= 6 else loss

    monkeypatch.setattr(engine_mod, "next_token_loss", flaky)
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=50", "train.max_bad_steps=3",
                      "train.sample_tokens=0")
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        train(cfg)
    records = read_metrics(tmp_path / "run")
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert skipped == [3, 6, 7, 8]
    assert [r["step"] for r in records if "loss" in r and not r.get("skipped")] == [1, 2, 4, 5]
    # The last good checkpoint holds finite weights equal to those after step 5 (skips changed nothing).
    model, ckpt_dir = load_model(tmp_path / "run")
    assert ckpt_dir.name == "step_0000008"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_training_state(ckpt_dir)["skipped_steps"] == 4


def test_config_and_model_are_untouched_by_training(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=3", "train.sample_tokens=0")
    before = copy.deepcopy(cfg)
    train(cfg)
    assert cfg == before
    assert find_checkpoint(tmp_path / "run").name == "step_0000003"


def test_changed_data_settings_are_not_silently_reused(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "data.val_fraction=0.2")
    with pytest.raises(DataError, match=r"data\.dataset_dir: .*built from other inputs"):
        train(cfg)


def test_model_vocab_must_match_the_datasets_tokenizer(tmp_path, tiny_data):
    with pytest.raises(DataError, match=r"holds a 384-token tokenizer but model\.vocab_size is 512"):
        train(tiny_config(tmp_path / "run", tiny_data, "model.vocab_size=512"))


def test_every_checkpoint_is_evaluated(tmp_path, tiny_data):
    train(tiny_config(tmp_path / "run", tiny_data, "train.max_steps=6", "train.save_interval=3",
                      "train.eval_interval=100", "train.sample_tokens=0", "train.keep_last=5"))
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "checkpoints").glob("step_*/meta.json"))]
    assert [m["step"] for m in metas] == [3, 6]
    assert all(isinstance(m["val_loss"], float) for m in metas)


def test_init_from_loads_weights_with_a_fresh_optimizer(tmp_path, tiny_data):
    train(tiny_config(tmp_path / "a", tiny_data, "train.max_steps=6", "train.sample_tokens=0"))
    # The same architecture written differently (explicit SwiGLU width, longer context) is accepted.
    cfg = tiny_config(tmp_path / "b", tiny_data, "train.max_steps=4", "train.sample_tokens=0",
                      f"train.init_from={tmp_path / 'a'}", "model.ffn_hidden_dim=192", "model.max_seq_len=128")
    assert cfg.model.hidden_dim == tiny_config(tmp_path, tiny_data).model.hidden_dim
    trainer = Trainer(cfg)
    assert trainer.step == 0 and not trainer.engine.optimizer.state
    saved, _ = load_model(tmp_path / "a")
    for name, p in saved.state_dict().items():
        assert torch.equal(trainer.engine.raw_model.state_dict()[name], p), name
    trainer.fit()
    first = next(r for r in read_metrics(tmp_path / "b") if "loss" in r)
    fresh = next(r for r in read_metrics(tmp_path / "a") if "loss" in r)
    assert first["step"] == 1 and first["loss"] < fresh["loss"] - 0.5


def test_max_time_stops_saves_and_runs_the_schedule_over_the_time_budget(tmp_path, tiny_data):
    """A fake clock advancing 1 s per step: a 10 s budget stops at step 10 of 1000, evaluates and saves there, and
    the LR has decayed as if 90% of the run were done; rerunning the command finds the budget spent."""
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=1000", "train.max_time=10",
                      "train.eval_interval=500", "train.save_interval=500", "train.sample_tokens=0")
    trainer = Trainer(cfg)
    ticks = iter(range(10**6))
    trainer._now = lambda: float(next(ticks))
    result = trainer.fit()
    assert result.step == 10 and result.checkpoint.name == "step_0000010" and result.final_val_loss is not None
    records = [r for r in read_metrics(tmp_path / "run") if "lr" in r]
    assert [r["step"] for r in records] == list(range(1, 11))
    # Step 10 ran with 9 of 10 seconds spent: the schedule stood at 0.9 * 999 steps of the cosine.
    assert records[-1]["lr"] == pytest.approx(lr_at(0.9 * 999, cfg.optim, 1000))
    assert records[-1]["lr"] < cfg.optim.min_lr + 0.05 * (cfg.optim.lr - cfg.optim.min_lr)  # near the floor
    assert load_training_state(result.checkpoint)["train_seconds"] == 10.0
    again = train(tiny_config(tmp_path / "run", tiny_data, "train.max_steps=1000", "train.max_time=10",
                              "train.eval_interval=500", "train.save_interval=500", "train.sample_tokens=0"))
    assert again.step == 10
