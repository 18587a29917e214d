"""train.eval_tasks: lm-eval tasks at each evaluation, logged beside val_loss, checked at startup, and invisible
to training (the loss curve with them equals the curve without them, exactly). Local tasks only, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# datasets and huggingface_hub read these when first imported: set them before lm_eval imports either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")

from core.errors import ConfigError
from tests.inference.lm_eval_tasks import write_task
from train.trainer import Trainer, train

from .conftest import tiny_config
from .test_trainer import deterministic, read_metrics

CONTEXT = "def alpha_1(beta):\n    return beta +"
# Both choices are the same text, so both get the same log-likelihood and lm-eval picks the first: accuracy is 1
# on the documents labelled 0 and 0 on the others, whatever the model. The first two are labelled 0.
TIE_DOCS = [{"question": CONTEXT, "choices": [" 1", " 1"], "label": label} for label in (0, 0, 1, 1)]
GEN_DOCS = [{"prompt": "def gamma_3(delta):\n    return", "answer": " delta + 3"}]
PPL_DOCS = [{"text": "def omega_7(total):\n    return total + 7\n"}]
TASKS = ["tie_mc", "code_gen", "code_ppl"]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multiple choice, generate_until and a rolling perplexity over the training corpus's kind of text."""
    root = tmp_path_factory.mktemp("train_tasks")
    directory, cache = root / "tasks", root / "datasets_cache"
    directory.mkdir()
    write_task(directory, "tie_mc", TIE_DOCS, cache, output_type="multiple_choice", doc_to_text="question",
               doc_to_choice="choices", doc_to_target="label", metric_list=[{"metric": "acc"}])
    write_task(directory, "code_gen", GEN_DOCS, cache, output_type="generate_until", doc_to_text="prompt",
               doc_to_target="answer", metric_list=[{"metric": "exact_match"}],
               generation_kwargs={"until": ["\n"], "max_gen_toks": 6, "do_sample": False})
    write_task(directory, "code_ppl", PPL_DOCS, cache, output_type="loglikelihood_rolling", doc_to_text="",
               doc_to_target="text", metric_list=[{"metric": "bits_per_byte"}])
    return directory


def test_eval_tasks_are_logged_with_val_loss_and_leave_training_unchanged(tmp_path, tiny_data, tasks_dir, capsys):
    # Dropout on and a sample at each evaluation: any RNG draw or mode change by lm-eval would show in the losses.
    args = ("train.max_steps=4", "train.eval_interval=2", "train.save_interval=2", "model.dropout=0.1")
    train(tiny_config(tmp_path / "plain", tiny_data, *args))
    capsys.readouterr()
    train(tiny_config(tmp_path / "tasks", tiny_data, *args, f"train.eval_tasks=[{','.join(TASKS)}]",
                      f"train.eval_tasks_include={tasks_dir}", "train.eval_tasks_limit=2"))
    printed = capsys.readouterr().out

    plain, tasks = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "tasks")
    without_tasks = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in tasks]
    assert deterministic(without_tasks) == deterministic(plain)  # equality, not tolerance

    evals = [r for r in tasks if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:  # in the same record as val_loss
        assert set(record) - {"step", "val_loss", "val_ppl", "val_bpb"} == {
            "eval/tie_mc/acc", "eval/code_gen/exact_match", "eval/code_ppl/bits_per_byte"}
        assert record["eval/tie_mc/acc"] == 1.0  # limit 2: only the two documents labelled 0 (all four: 0.5)
        assert record["eval/code_gen/exact_match"] in (0.0, 1.0)
        assert 0 < record["eval/code_ppl/bits_per_byte"] < 20
    assert evals[1]["eval/code_ppl/bits_per_byte"] < evals[0]["eval/code_ppl/bits_per_byte"]  # it learns
    for record in evals:
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"step {record['step']}: val_loss"))
        assert "tie_mc/acc 1.0000" in line
        assert f"code_ppl/bits_per_byte {record['eval/code_ppl/bits_per_byte']:.4f}" in line


def test_unknown_eval_task_fails_at_startup_naming_it(tmp_path, tiny_data, tasks_dir):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.eval_tasks=[tie_mc,no_such_task]",
                      f"train.eval_tasks_include={tasks_dir}")
    with pytest.raises(ConfigError, match=r"^train.eval_tasks: unknown task\(s\) no_such_task \(not found in "):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()  # before any data, model or run directory


def test_eval_tasks_include_must_be_a_directory(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path / "run", tiny_data, "train.eval_tasks=[tie_mc]",
                      f"train.eval_tasks_include={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match=r"^train.eval_tasks_include .*missing is not a directory$"):
        Trainer(cfg)


@pytest.mark.parametrize("limit", ["0", "-3", "1.5", "0.0"])
def test_eval_tasks_limit_must_be_a_count_or_a_fraction(tmp_path, tiny_data, limit):
    with pytest.raises(ConfigError, match=rf"^train.eval_tasks_limit must be .*, got {limit}$"):
        tiny_config(tmp_path, tiny_data, f"train.eval_tasks_limit={limit}")


@pytest.mark.parametrize(("limit", "value"), [("0.25", 0.25), ("3", 3)])
def test_eval_tasks_limit_accepts_counts_and_fractions(tmp_path, tiny_data, limit, value):
    limit_value = tiny_config(tmp_path, tiny_data, f"train.eval_tasks_limit={limit}").train.eval_tasks_limit
    assert limit_value == value and type(limit_value) is type(value)


def test_eval_tasks_names_each_task_once(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"^train.eval_tasks must name each task once"):
        tiny_config(tmp_path, tiny_data, "train.eval_tasks=[a,b,a]")
