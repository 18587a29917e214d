"""The lm-eval backend: per-request log-likelihoods, rolling log-likelihoods, generations and task metrics equal
lm-eval's own `hf` backend on the checkpoint exported with scripts/convert_hf.py; local tasks only, no network."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# datasets and huggingface_hub read these when first imported: set them before lm_eval imports either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

import numpy as np
import torch
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from core.errors import CheckpointError
from inference import Generator, SamplingParams
from inference.harness import HarnessError, MiniLLM, evaluate_tasks, flatten_results
from scripts import evaluate as evaluate_script
from scripts.convert_hf import export_checkpoint
from tests.inference.conftest import CORPUS, DOCS, MAX_SEQ_LEN
from tests.inference.lm_eval_tasks import write_task

TOL = 1e-4
# A rolling log-likelihood sums a whole document (thousands of nats): fp32 summation order alone moves it by a few
# float32 ulps of its size, so sums are compared within 1e-4 or 1e-6 relative (about 8 ulps), whichever is larger.
SUM_REL = 1e-6
TASKS = ["mini_mc", "mini_gen", "mini_ppl"]
LONG = " ".join(CORPUS[:6])  # well over MAX_SEQ_LEN tokens: forces left truncation and several rolling windows

MC_DOCS = [
    {"question": "Hello 🎉 world,", "choices": ["你好世界! Café ☕ and 😀 done.", "goodbye moon!", "again."],
     "label": 0},
    {"question": "The quick brown fox 🦊 jumps over", "choices": ["a sleepy cat.", "the lazy dog 🐶 again."],
     "label": 1},
    # Trailing spaces in the context move to the continuation (lm-eval's _encode_pair).
    {"question": "def add(a, b):\n   ", "choices": ["return a + b", "return a - b", "pass"], "label": 0},
    {"question": "", "choices": ["Hello 🎉 world", "Goodbye 🎉 world"], "label": 0},  # empty context: prefix token
    {"question": "Hello 🎉 world,", "choices": ["goodbye moon!", "你好世界! Café ☕ and 😀 done."],
     "label": 0},  # a wrong gold label: accuracy below 1
    {"question": LONG + " The quick brown fox 🦊 jumps over", "choices": ["the lazy dog 🐶 again.", "the moon."],
     "label": 0},
]
GEN_DOCS = [
    {"prompt": "Hello 🎉 world, 你好世界! Café", "answer": " ☕ and 😀 done"},
    {"prompt": "The quick brown fox 🦊 jumps over the", "answer": " lazy dog 🐶 again"},
    {"prompt": "def add(a, b):\n    return", "answer": " a - b"},
    {"prompt": LONG + " The quick brown fox 🦊 jumps over the", "answer": " lazy dog 🐶 again"},
]
PPL_DOCS = [{"text": d} for d in [*DOCS, LONG]]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three local tasks over jsonl files: multiple choice, generate_until and a rolling perplexity."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    directory, cache = root / "tasks", root / "datasets_cache"
    directory.mkdir()
    write_task(directory, "mini_mc", MC_DOCS, cache, output_type="multiple_choice", doc_to_text="question",
                doc_to_choice="choices", doc_to_target="label",
                metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    write_task(directory, "mini_gen", GEN_DOCS, cache, output_type="generate_until", doc_to_text="prompt",
                doc_to_target="answer", metric_list=[{"metric": "exact_match"}],
                generation_kwargs={"until": ["."], "max_gen_toks": 16, "do_sample": False})
    write_task(directory, "mini_ppl", PPL_DOCS, cache, output_type="loglikelihood_rolling", doc_to_text="",
                doc_to_target="text",
                metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])
    return directory


def _evaluate(model, tasks_dir: Path, **kwargs) -> dict:
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    return simple_evaluate(model=model, tasks=TASKS, task_manager=manager, log_samples=True, bootstrap_iters=0,
                           **kwargs)


@pytest.fixture(scope="module")
def ours(memorized_ckpt: Path, tasks_dir: Path) -> dict:
    # batch_size 3 splits every task into several padded batches of different lengths.
    return _evaluate(MiniLLM(checkpoint=str(memorized_ckpt), device="cpu", dtype="fp32", batch_size=3), tasks_dir)


@pytest.fixture(scope="module")
def hf_dir(memorized_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported to a Hugging Face directory by scripts/convert_hf.py."""
    return export_checkpoint(memorized_ckpt, tmp_path_factory.mktemp("hf") / "export")


@pytest.fixture(scope="module")
def hf(hf_dir: Path, tasks_dir: Path) -> dict:
    return _evaluate("hf", tasks_dir, model_args={"pretrained": str(hf_dir), "dtype": "float32"}, device="cpu",
                     batch_size=2)


def _responses(results: dict, task: str) -> list:
    """Per document, per request: the backend's raw answer, in document order."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0] for r in s["resps"]] for s in samples]


def test_the_long_documents_exceed_the_context(tokenizer) -> None:
    """Guard: truncation and multi-window paths are really exercised by the task data."""
    assert len(tokenizer.encode(LONG)) > 2 * MAX_SEQ_LEN


def test_loglikelihoods_equal_the_hf_backend(ours: dict, hf: dict) -> None:
    ours_docs, hf_docs = _responses(ours, "mini_mc"), _responses(hf, "mini_mc")
    assert len(ours_docs) == len(MC_DOCS)
    for doc, (ours_reqs, hf_reqs) in enumerate(zip(ours_docs, hf_docs, strict=True)):
        assert len(ours_reqs) == len(MC_DOCS[doc]["choices"])
        for (ours_ll, ours_greedy), (hf_ll, hf_greedy) in zip(ours_reqs, hf_reqs, strict=True):
            assert ours_ll == pytest.approx(float(hf_ll), abs=TOL), f"doc {doc}"
            assert ours_greedy == hf_greedy, f"doc {doc}"
    # The memorized continuation is greedy on the model: is_greedy is not trivially False everywhere.
    assert any(greedy for reqs in ours_docs for _, greedy in reqs)


def test_rolling_loglikelihoods_equal_the_hf_backend(ours: dict, hf: dict) -> None:
    ours_ll = [reqs[0] for reqs in _responses(ours, "mini_ppl")]
    hf_ll = [reqs[0] for reqs in _responses(hf, "mini_ppl")]
    assert len(ours_ll) == len(PPL_DOCS)
    assert ours_ll == pytest.approx([float(x) for x in hf_ll], abs=TOL, rel=SUM_REL)


def test_generations_equal_the_hf_backend(ours: dict, hf: dict) -> None:
    ours_text, hf_text = _responses(ours, "mini_gen"), _responses(hf, "mini_gen")
    assert ours_text == hf_text
    assert ours_text[0] == [GEN_DOCS[0]["answer"]]  # the memorized text, cut before the stop string "."


def test_task_metrics_equal_the_hf_backend(ours: dict, hf: dict) -> None:
    ours_flat, hf_flat = flatten_results(ours), flatten_results(hf)
    assert sorted(ours_flat) == sorted(hf_flat)
    for name in ("mini_mc/acc", "mini_mc/acc_norm", "mini_gen/exact_match"):
        assert ours_flat[name] == hf_flat[name], name
    assert 0 < ours_flat["mini_mc/acc"] < 1 and 0 < ours_flat["mini_gen/exact_match"] < 1  # not degenerate
    for name in ("mini_ppl/word_perplexity", "mini_ppl/byte_perplexity", "mini_ppl/bits_per_byte"):
        assert ours_flat[name] == pytest.approx(hf_flat[name], rel=1e-5), name


def test_batch_size_does_not_change_the_answers(memorized_ckpt: Path, tasks_dir: Path, ours: dict) -> None:
    one = _evaluate(MiniLLM(checkpoint=str(memorized_ckpt), device="cpu", dtype="fp32", batch_size=1), tasks_dir)
    assert _responses(one, "mini_gen") == _responses(ours, "mini_gen")
    for task in ("mini_mc", "mini_ppl"):
        flat = lambda r: [x for reqs in _responses(r, task) for x in np.ravel(np.asarray(reqs, dtype=float))]  # noqa: B023
        assert flat(one) == pytest.approx(flat(ours), abs=1e-5, rel=SUM_REL)


def test_evaluate_tasks_on_an_in_memory_model_restores_its_state(memorized_ckpt: Path, tasks_dir: Path,
                                                                 ours: dict) -> None:
    gen = Generator.from_checkpoint(memorized_ckpt, device="cpu", dtype="fp32")
    model = gen.model.train()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    metrics = evaluate_tasks(model, gen.tokenizer, TASKS, include_path=tasks_dir, batch_size=4,
                             include_defaults=False)
    assert metrics == pytest.approx(flatten_results(ours), rel=1e-5)
    # The caller's model and random streams are as before: training continues as if nothing happened.
    assert model.training and model.cache_len is None
    after = (torch.rand(3).tolist(), random.random(), np.random.rand())
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert after == (torch.rand(3).tolist(), random.random(), np.random.rand())


def test_prefix_token_id_is_honoured_like_the_hf_backend(memorized_ckpt: Path, hf_dir: Path) -> None:
    """prefix_token_id=2 (EOS, what precedes every document in our training data) stands for an empty context and
    starts rolling windows in both backends; it changes the numbers, so the parity is not a coincidence."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ll = [Instance("loglikelihood", {}, ("", " Hello 🎉 world"), 0),
          Instance("loglikelihood", {}, ("The quick brown", " fox 🦊 jumps"), 1)]
    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate([DOCS[0], LONG])]
    hf_lm = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", prefix_token_id=2)
    for prefix in (None, 2):
        ours_lm = MiniLLM(checkpoint=str(memorized_ckpt), device="cpu", dtype="fp32", batch_size=2,
                          prefix_token_id=prefix)
        ours_ll = ours_lm.loglikelihood(ll, disable_tqdm=True)
        ours_rolling = ours_lm.loglikelihood_rolling(rolling, disable_tqdm=True)
        if prefix is None:
            bos_ll, bos_rolling = ours_ll, ours_rolling
    hf_ll = hf_lm.loglikelihood(ll, disable_tqdm=True)
    assert [g for _, g in ours_ll] == [g for _, g in hf_ll]
    assert [x for x, _ in ours_ll] == pytest.approx([x for x, _ in hf_ll], abs=TOL)
    assert ours_rolling == pytest.approx(hf_lm.loglikelihood_rolling(rolling, disable_tqdm=True), abs=TOL,
                                         rel=SUM_REL)
    assert abs(bos_ll[0][0] - ours_ll[0][0]) > 1e-2 and abs(bos_rolling[1] - ours_rolling[1]) > 1e-2
    assert bos_ll[1][0] == pytest.approx(ours_ll[1][0], abs=TOL)  # a non-empty context never sees the prefix


def test_generation_kwargs_map_to_sampling_params(memorized_ckpt: Path) -> None:
    lm = MiniLLM(checkpoint=str(memorized_ckpt), device="cpu")
    assert lm._sampling({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5}) == SamplingParams(
        temperature=0.7, top_k=5, top_p=0.9)
    assert lm._sampling({"do_sample": False, "temperature": 0.0}).greedy


# ---- bad input -------------------------------------------------------------------------------------------------


def test_bad_model_args_are_user_errors(memorized_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        MiniLLM(checkpoint=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(HarnessError, match="batch_size must be a whole number"):
        MiniLLM(checkpoint=str(memorized_ckpt), device="cpu", batch_size="auto")
    with pytest.raises(HarnessError, match="max_length 1000 exceeds"):
        MiniLLM(checkpoint=str(memorized_ckpt), device="cpu", max_length=1000)
    with pytest.raises(HarnessError, match="exactly one of"):
        MiniLLM()
    with pytest.raises(HarnessError, match=r"unknown model_args \['pretrained'\]"):
        MiniLLM(checkpoint=str(memorized_ckpt), pretrained="gpt2")


def test_unsupported_generation_kwargs_name_the_key(memorized_ckpt: Path) -> None:
    lm = MiniLLM(checkpoint=str(memorized_ckpt), device="cpu")
    with pytest.raises(HarnessError, match="num_beams"):
        lm._sampling({"do_sample": False, "temperature": 0.0, "num_beams": 4})


# ---- scripts/evaluate.py ---------------------------------------------------------------------------------------


def test_script_prints_the_table_and_writes_the_results(memorized_ckpt: Path, tasks_dir: Path, tmp_path: Path,
                                                         capsys, ours: dict) -> None:
    out = tmp_path / "results.json"
    code = evaluate_script.main([
        "--checkpoint", str(memorized_ckpt), "--tasks", "mini_mc,mini_gen", "--include-path", str(tasks_dir),
        "--no-builtin-tasks", "--device", "cpu", "--batch-size", "2", "--limit", "3", "--output", str(out),
    ])
    assert code == 0
    table = capsys.readouterr().out
    assert "mini_mc" in table and "acc_norm" in table and "exact_match" in table
    saved = json.loads(out.read_text())
    assert saved["results"]["mini_mc"]["acc,none"] == pytest.approx(
        np.mean([max(range(len(r)), key=lambda k: r[k][0]) == d["label"]
                 for r, d in zip(_responses(ours, "mini_mc")[:3], MC_DOCS, strict=False)])
    )


@pytest.mark.parametrize(("flags", "needle"), [
    (["--checkpoint", "{missing}", "--tasks", "mini_mc"], "checkpoint path does not exist"),
    (["--tasks", "no_such_task"], "unknown task(s) ['no_such_task']"),
    (["--tasks", "mini_mc", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_script_bad_input_is_one_error_line_and_exit_2(memorized_ckpt: Path, tasks_dir: Path, tmp_path: Path,
                                                       capsys, flags: list[str], needle: str) -> None:
    flags = [f.format(missing=tmp_path / "missing") for f in flags]
    if "--checkpoint" not in flags:
        flags = ["--checkpoint", str(memorized_ckpt), *flags]
    code = evaluate_script.main([*flags, "--include-path", str(tasks_dir), "--no-builtin-tasks", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and needle in err[-1]


# ---- scripts/lm_eval_cli.py: lm-eval's own command line with mini-llm registered --------------------------------


@pytest.mark.slow  # lm-eval's CLI indexes its ~15k built-in task files first (about 15 s of CPU)
def test_lm_eval_command_line_runs_the_backend(memorized_ckpt: Path, tasks_dir: Path, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "lm_eval_cli.py"
    run = subprocess.run(
        [sys.executable, str(script), "--model", "mini-llm", "--model_args", f"checkpoint={memorized_ckpt},dtype=fp32",
         "--tasks", "mini_mc", "--include_path", str(tasks_dir), "--limit", "3", "--batch_size", "2",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "mini-llm" in run.stdout and "mini_mc" in run.stdout and "acc_norm" in run.stdout  # lm-eval's table
    saved = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert saved["config"]["model"] == "mini-llm"
    assert saved["results"]["mini_mc"]["acc,none"] == 1.0  # the first three documents' gold answers are memorized
