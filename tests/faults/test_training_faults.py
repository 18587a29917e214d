"""Faults that used to lose or corrupt a run: each is injected for real, and each test asserts that the previous
state loads, that the next run resumes with the losses of an uninterrupted run, and that no temporary file is left.

Injected: a torn metrics line; non-finite weights at a checkpoint; a corrupt trainer state (truncated, random
bytes, a malicious pickle); a torn meta.json; a full disk while saving (a real small tmpfs where the machine lets
us mount one, else a writer that raises ENOSPC); SIGKILL at four points of checkpoint saving.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.errors import CheckpointError
from model.checkpoint import find_checkpoint, load_model
from tests.train.conftest import tiny_config, write_config
from train.trainer import Trainer, TrainingStopped, train

ROOT = Path(__file__).resolve().parents[2]
RUN = ("train.max_steps=6", "train.save_interval=2", "train.eval_interval=2", "train.keep_last=3",
       "train.sample_tokens=0")


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r and "val_loss" not in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def no_temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.startswith((".tmp-", ".old-")) or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data) -> dict[int, float]:
    """Losses of the uninterrupted run every faulty run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_config(out, tiny_data, *RUN))
    return losses(out)


def test_torn_metrics_line_is_dropped_and_every_record_kept(tmp_path, tiny_data, reference):
    run = tmp_path / "run"
    train(tiny_config(run, tiny_data, *RUN, "train.stop_at_step=4"))
    metrics = run / "metrics.jsonl"
    kept = metrics.read_text()
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 3.1')  # a full disk cut the last record short
    assert train(tiny_config(run, tiny_data, *RUN)).step == 6
    text = metrics.read_text()
    assert text.startswith(kept)  # every complete record survived
    assert losses(run) == reference
    assert not no_temporaries(run)


def test_non_finite_weights_are_never_saved(tmp_path, tiny_data, monkeypatch):
    """An update that overflows the weights (the loss itself still finite) must not become a checkpoint."""
    trainer = Trainer(tiny_config(tmp_path / "run", tiny_data, *RUN))
    real_step = trainer.engine.train_step

    def overflowing_step(batches, *args, **kwargs):
        result = real_step(batches, *args, **kwargs)
        if trainer.step == 2:  # the update of step 3 blows up
            with torch.no_grad():
                trainer.engine.raw_model.layers[0].attention.wq.weight.fill_(float("inf"))
        return result

    monkeypatch.setattr(trainer.engine, "train_step", overflowing_step)
    with pytest.raises(TrainingStopped, match=r"not saving step 4: weight layers\.0\.attention\.wq\.weight holds "
                                              r"non-finite values; the newest checkpoint stays step_0000002"):
        trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_0000002" and not (ckpts / "step_0000004").exists()
    model, _ = load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not no_temporaries(tmp_path / "run")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _malicious(path: Path) -> None:
    path.write_bytes(pickle.dumps({"step": 4, "payload": _Exploit()}, protocol=2))


@pytest.mark.parametrize("corrupt", [_truncate, _random, _malicious], ids=["truncated", "random", "malicious"])
def test_corrupt_trainer_state_falls_back_to_the_newest_good_checkpoint(tmp_path, tiny_data, reference, capsys,
                                                                        corrupt):
    run = tmp_path / "run"
    train(tiny_config(run, tiny_data, *RUN, "train.stop_at_step=4"))
    bad = run / "checkpoints" / "step_0000004"
    corrupt(bad / "trainer_state.pt")
    # An explicit path that does not load is one error, without torch's advice to load unsafely.
    with pytest.raises(CheckpointError) as info:
        train(tiny_config(run, tiny_data, *RUN, f"train.resume={bad}"))
    assert str(bad / "trainer_state.pt") in str(info.value) and "weights_only=False" not in str(info.value)
    assert "\n" not in str(info.value)
    # auto skips it, says why, and resumes from step 2 with the reference losses.
    capsys.readouterr()
    assert train(tiny_config(run, tiny_data, *RUN)).step == 6
    assert f"skipped checkpoint {bad}" in capsys.readouterr().out
    assert losses(run) == reference
    assert not no_temporaries(run)


def test_torn_meta_of_an_older_checkpoint_does_not_stop_pruning(tmp_path, tiny_data, reference):
    run = tmp_path / "run"
    train(tiny_config(run, tiny_data, *RUN, "train.stop_at_step=4"))
    (run / "checkpoints" / "step_0000002" / "meta.json").write_text('{"step": 2, "val_l')
    assert train(tiny_config(run, tiny_data, *RUN, "train.keep_last=1")).step == 6
    assert losses(run) == reference
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"


def _mount_tmpfs(directory: Path, size_kb: int) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(directory)],
                          capture_output=True)
    return proc.returncode == 0


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_data, reference, monkeypatch):
    """A real tmpfs sized for one checkpoint and a bit (the second cannot be written next to it); where mounting
    is not allowed, the weights writer raises ENOSPC instead. The test says which ran."""
    probe = tmp_path / "probe"
    train(tiny_config(probe, tiny_data, *RUN, "train.stop_at_step=2"))
    one = sum(p.stat().st_size for p in (probe / "checkpoints" / "step_0000002").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, int(one * 1.6) // 1024 + 64)
    try:
        if not mounted:
            import model.checkpoint as model_ckpt

            real = model_ckpt.save_file
            calls = []

            def full(*args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(*args, **kwargs)

            monkeypatch.setattr(model_ckpt, "save_file", full)
        run = disk / "run"
        with pytest.raises(CheckpointError, match=r"no space left on the device holding .*checkpoints.*previous "
                                                  r"checkpoint is intact"):
            train(tiny_config(run, tiny_data, *RUN))
        assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
        load_model(run)  # the previous checkpoint is whole
        assert not no_temporaries(run)
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        else:
            monkeypatch.undo()
        assert train(tiny_config(run, tiny_data, *RUN)).step == 6
        assert losses(run) == reference
        assert not no_temporaries(run)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)
    print(f"full-disk fault: {'real tmpfs' if mounted else 'ENOSPC injected in the weights writer'}")


KILL_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import core.atomic as atomic
    import train.checkpoint as ckpt
    from core.configio import load_yaml_tree
    from train.config import config_from_dict
    from train.trainer import train

    point, armed = {point!r}, []
    real_save = ckpt.save_training_checkpoint

    def save(out_dir, step, *args, **kwargs):
        if step == 4:
            armed.append(0)
        return real_save(out_dir, step, *args, **kwargs)

    ckpt.save_training_checkpoint = save

    def die_at(module, name, nth):
        real = getattr(module, name)
        calls = []

        def wrapper(*args, **kwargs):
            if armed:
                calls.append(1)
                if len(calls) == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    kind, nth = point.split(":")
    if kind == "fsync":  # while the new checkpoint's files are synced, before its rename
        die_at(atomic.os, "fsync", int(nth))
    elif kind == "state":  # inside torch.save of trainer_state.pt
        die_at(ckpt.torch, "save", int(nth))
    elif kind == "replace":  # after the rename, while `latest` is replaced
        die_at(atomic.os, "replace", int(nth))
    train(config_from_dict(load_yaml_tree({cfg!r})))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["state:1", "fsync:1", "fsync:3", "replace:1"])
def test_sigkill_while_saving(tmp_path, tiny_data, reference, point):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, tiny_data, *RUN))
    script = KILL_WHILE_SAVING.format(root=str(ROOT), cfg=str(cfg), point=point)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    load_model(find_checkpoint(run))
    assert train(tiny_config(run, tiny_data, *RUN)).step == 6
    assert losses(run) == reference
    assert not no_temporaries(run)
