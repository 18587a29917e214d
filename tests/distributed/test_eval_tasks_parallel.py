"""train.eval_tasks under FSDP (real torchrun, gloo on CPU): every rank runs the tasks (each forward gathers the
weights, so a rank that skipped them would hang the others; lm-eval answers only where LOCAL_RANK is 0); the logged
scores and the loss curve equal one process's. (DDP passes too; left out to keep CI short.)"""

from __future__ import annotations

import json

import pytest

from tests.distributed.conftest import losses, torchrun
from tests.train.conftest import tiny_config
from tests.train.test_eval_tasks import TASKS, tasks_dir  # noqa: F401  (tasks_dir is a fixture)
from train.trainer import train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def task_scores(out_dir) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")} for r in records if "val_loss" in r}


def test_eval_tasks_on_two_fsdp_ranks_match_one_process(tmp_path, tiny_data, tasks_dir):  # noqa: F811
    parallel = "fsdp"
    args = ("train.max_steps=4", "train.eval_interval=2", "train.save_interval=4", "train.sample_tokens=0",
            "train.micro_batch_size=4", f"train.eval_tasks=[{','.join(TASKS)}]",
            f"train.eval_tasks_include={tasks_dir}")
    train(tiny_config(tmp_path / "one", tiny_data, *args))
    config = tmp_path / "two.yaml"
    tiny_config(tmp_path / "two", tiny_data, *args).save(config)
    proc = torchrun(config, f"train.parallel={parallel}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"parallel {parallel}, 2 rank(s)" in proc.stdout
    one, two = task_scores(tmp_path / "one"), task_scores(tmp_path / "two")
    assert sorted(two) == sorted(one) == [2, 4]
    for step in one:
        assert set(two[step]) == set(one[step]) and len(one[step]) == 3
        assert two[step]["eval/tie_mc/acc"] == one[step]["eval/tie_mc/acc"] == 0.5  # all four documents
        assert two[step] == pytest.approx(one[step], abs=1e-4), step
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
