"""run_train.py as a user runs it: config errors, SIGTERM, and a process killed while saving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import run_train
from model.checkpoint import load_model
from train.checkpoint import load_training_state
from train.trainer import train

from .conftest import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_head=4", "unknown config key 'model.n_head' (did you mean 'model.n_heads'?)"),
        ("train.lr=1e-3", "unknown config key 'train.lr' (did you mean 'optim.lr'?)"),
        ("train.max_steps=ten", "config key 'train.max_steps' expects int, got 'ten' (str)"),
        ("optim.warmup_steps=500", "optim.warmup_steps (500) must be shorter than train.max_steps (20)"),
        ("optim.min_lr=1.0", "optim.min_lr (1.0) must be between 0 and optim.lr"),
        ("model.n_kv_heads=3", "model.n_heads (4) must be divisible by model.n_kv_heads (3)"),
        ("train.micro_batch_size=3", "train.batch_size (8) must be divisible by train.micro_batch_size (3)"),
        ("train.seq_len=128", "train.seq_len (128) exceeds model.max_seq_len (64)"),
        ("train.precision=fp8", "config key 'train.precision' must be one of"),
        ("train.sample_tokens=64", "train.sample_tokens must be in [0, model.max_seq_len=64)"),
        ('train.sample_prompt=""', "train.sample_prompt must not be empty"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(tmp_path, tiny_data, capsys, override, message):
    path = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", tiny_data))
    assert run_train.main(["--config", str(path), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_cli_error_has_no_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = run_cli("--config", str(missing))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: config file not found: {missing}"


def test_print_config_resolves_overrides(tmp_path, tiny_data, capsys):
    path = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", tiny_data))
    assert run_train.main(["--config", str(path), "--print-config", "optim.lr=5e-4"]) == 0
    assert "lr: 0.0005" in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_finishes_step_and_saves(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=100000", "train.save_interval=100000",
                      "train.eval_interval=100000", "optim.warmup_steps=10")
    path = write_config(tmp_path / "cfg.yaml", cfg)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_train.py"), "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    _, ckpt_dir = load_model(tmp_path / "run")
    saved_step = load_training_state(ckpt_dir)["step"]
    assert 3 <= last_logged <= saved_step < 100000
    assert ckpt_dir.name == f"step_{saved_step:07d}"


KILL_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import train.checkpoint as ckpt
    from core.configio import load_yaml_tree
    from train.config import config_from_dict
    from train.trainer import train

    real_save = ckpt.torch.save
    calls = []

    def dying_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: weights already written, state half-written
            with open(path, "wb") as f:
                f.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, path, *args, **kwargs)

    ckpt.torch.save = dying_save
    train(config_from_dict(load_yaml_tree({cfg!r})))
    """
)


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.max_steps=6", "train.save_interval=2",
                      "train.sample_tokens=0")
    path = write_config(tmp_path / "cfg.yaml", cfg)
    script = KILL_WHILE_SAVING.format(root=str(ROOT), cfg=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_0000002"
    assert list(ckpts.glob(".tmp-step_0000004-*"))  # the half-written one never got its final name
    assert not (ckpts / "step_0000004").exists()
    model, _ = load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Resuming continues from step 2 and cleans up the debris.
    result = train(tiny_config(tmp_path / "run", tiny_data, "train.max_steps=6", "train.save_interval=2",
                               "train.sample_tokens=0"))
    assert result.step == 6
    assert not list(ckpts.glob(".tmp-*"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no step logged twice
    assert os.path.isdir(ckpts / "step_0000006")
