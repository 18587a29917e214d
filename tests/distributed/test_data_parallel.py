"""Two processes under real torchrun (gloo on CPU) against the single-process run of the same global batch:
DDP and FSDP2 per-step losses, exported weights, checkpoints resumed on another world size, and the
batch-divisibility error.

Every run takes 8 sequences per optimizer step. The 2-rank runs use micro batches of 2 (two per step on each
rank), so gradient accumulation and its skipped synchronization are exercised too. Equality is up to the order
of floating-point sums (one batch of 8 against two ranks' means), hence the tolerances.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import find_checkpoint
from train.checkpoint import load_training_state
from train.trainer import train

from .conftest import ROOT, losses, tiny_config, torchrun

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 6
# lr 1e-3: AdamW turns a 1e-7 relative change of a near-zero gradient (from the order of the sums) into a
# weight change of up to ~lr * 1e-3; at this rate the exported weights stay within 1e-6.
RUN = (f"train.max_steps={STEPS}", f"train.save_interval={STEPS}", f"train.eval_interval={STEPS}",
       "train.eval_batches=1", "train.sample_tokens=0", "optim.lr=1e-3", "optim.min_lr=1e-4")
TWO_RANKS = ("train.micro_batch_size=2",)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """Single-process runs (untied and tied embeddings), made on first use: out_dir by `tied`."""
    runs = {}

    def get(tied: bool):
        if tied not in runs:
            out = tmp_path_factory.mktemp(f"reference_tied_{tied}")
            train(tiny_config(out, tiny_data, *RUN, f"model.tie_embeddings={str(tied).lower()}"))
            runs[tied] = out
        return runs[tied]

    return get


def config_file(tmp_path, tiny_data, name: str, *overrides: str):
    """A config YAML for a run in tmp_path/name (launch overrides go on the command line)."""
    path = tmp_path / f"{name}.yaml"
    tiny_config(tmp_path / name, tiny_data, *RUN, *overrides).save(path)
    return path


def assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step


def assert_same_weights(run_dir, reference_dir, atol: float = 1e-6) -> None:
    got = load_file(str(find_checkpoint(run_dir) / "model.safetensors"))
    expected = load_file(str(find_checkpoint(reference_dir) / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_ddp_matches_single_process(tmp_path, tiny_data, reference):
    config = config_file(tmp_path, tiny_data, "ddp")
    proc = ok(torchrun(config, *TWO_RANKS))  # train.parallel=auto: DDP with two processes
    assert "parallel ddp, 2 rank(s), 2 micro batch(es) per step" in proc.stdout
    assert proc.stdout.count("memory estimate") == 1  # progress and logs come from rank 0 only
    assert_same_losses(losses(tmp_path / "ddp"), losses(reference(False)))
    assert_same_weights(tmp_path / "ddp", reference(False))


def test_fsdp_matches_single_process(tmp_path, tiny_data, reference):
    """Tied embeddings (one parameter in the root FSDP unit), activation checkpointing, and sampling (every
    rank runs the generation forwards) on top."""
    config = config_file(tmp_path, tiny_data, "fsdp", "model.tie_embeddings=true")
    proc = ok(torchrun(config, *TWO_RANKS, "train.parallel=fsdp", "train.activation_checkpointing=true",
                       "train.sample_tokens=8"))
    assert "parallel fsdp, 2 rank(s)" in proc.stdout and proc.stdout.count("sample: ") == 1
    assert_same_losses(losses(tmp_path / "fsdp"), losses(reference(True)))
    assert_same_weights(tmp_path / "fsdp", reference(True))
    # The optimizer state is full and keyed by parameter name, exactly like a single-process run's.
    got = load_training_state(find_checkpoint(tmp_path / "fsdp"))["optimizer"]
    expected = load_training_state(find_checkpoint(reference(True)))["optimizer"]
    assert got["state"].keys() == expected["state"].keys() and "tok_embeddings.weight" in got["state"]
    assert [g["params"] for g in got["param_groups"]] == [g["params"] for g in expected["param_groups"]]
    for name, state in expected["state"].items():
        assert got["state"][name]["exp_avg_sq"].shape == state["exp_avg_sq"].shape, name


def test_fsdp_checkpoint_resumes_on_one_rank(tmp_path, tiny_data, reference):
    """The 2-rank half also compiles its checkpointed blocks before sharding them (the order of
    apply_parallelism); the checkpoint it writes loads into a plain, uncompiled model."""
    config = config_file(tmp_path, tiny_data, "split")
    ok(torchrun(config, *TWO_RANKS, "train.parallel=fsdp", "train.stop_at_step=3", "train.compile=true",
                "train.activation_checkpointing=true", timeout=300))
    assert find_checkpoint(tmp_path / "split").name == "step_0000003"
    train(tiny_config(tmp_path / "split", tiny_data, *RUN))  # one process, resume=auto
    assert_same_losses(losses(tmp_path / "split"), losses(reference(False)))
    assert_same_weights(tmp_path / "split", reference(False), atol=1e-5)  # inductor reorders the arithmetic


@pytest.mark.parametrize(("parallel", "tied"), [("fsdp", True), ("ddp", False)])
def test_single_process_checkpoint_resumes_on_two_ranks(tmp_path, tiny_data, reference, parallel, tied):
    tie = f"model.tie_embeddings={str(tied).lower()}"
    train(tiny_config(tmp_path / "split", tiny_data, *RUN, tie, "train.stop_at_step=3"))
    proc = ok(torchrun(config_file(tmp_path, tiny_data, "split", tie), *TWO_RANKS, f"train.parallel={parallel}"))
    assert "at step 3 (saved by 1 rank(s))" in proc.stdout
    assert_same_losses(losses(tmp_path / "split"), losses(reference(tied)))
    assert_same_weights(tmp_path / "split", reference(tied))


MESSAGE = "error: train.batch_size (8) must be divisible by train.micro_batch_size (8) x 2 data-parallel rank(s) = 16"


def test_batch_not_divisible_across_ranks_is_one_error_and_exit_2(tmp_path, tiny_data):
    config = config_file(tmp_path, tiny_data, "bad")  # micro_batch_size 8 = the whole batch of 8
    proc = torchrun(config, timeout=90)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [MESSAGE]  # once: rank 0 reports, rank 1 exits quietly
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr)  # torchrun's report names the workers' exit code
    assert "run_train.py\", line" not in proc.stderr and "ConfigError" not in proc.stderr  # no worker traceback
    # The same two workers launched by hand, to read each exit code and stream exactly.
    workers = [
        subprocess.Popen([sys.executable, str(ROOT / "run_train.py"), "--config", str(config)], cwd=ROOT,
                         env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    results = [(w.wait(timeout=90), w.stdout.read(), w.stderr.read()) for w in workers]
    assert results[0] == (2, "", MESSAGE + "\n")
    assert results[1] == (2, "", "")
