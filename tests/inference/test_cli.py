"""run_inference.py: streamed text on stdout; bad input is one `error:` line on stderr and exit code 2.

The bad inputs of the issue and one good run go through real subprocesses (started together in a small pool,
since each pays for importing torch); the other flags are exercised in-process through inference.cli.main.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from inference.cli import main
from tests.inference.conftest import DOCS, MAX_SEQ_LEN

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "run_inference.py"
GREEDY = ["--temperature", "0", "--max-new-tokens", "80", "--device", "cpu"]

# name -> (arguments after --checkpoint CKPT, expected text in the error line; None for the good run)
SUBPROCESS_RUNS = {
    "greedy": (["--prompt", "Hello", *GREEDY], None),
    "missing_path": (["--prompt", "x"], "does not exist"),
    "not_a_checkpoint": (["--prompt", "x"], "is not a checkpoint"),
    "empty_prompt": (["--prompt", ""], "prompt is empty"),
    "negative_temperature": (["--prompt", "x", "--temperature", "-0.5"], "temperature"),
    "top_p_zero": (["--prompt", "x", "--top-p", "0"], "--top-p"),
    "top_p_above_one": (["--prompt", "x", "--top-p", "1.5"], "--top-p"),
}
ERRORS = [name for name, (_, error) in SUBPROCESS_RUNS.items() if error]


@pytest.fixture(scope="module")
def runs(memorized_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    not_a_checkpoint = tmp_path_factory.mktemp("not_a_checkpoint")
    (not_a_checkpoint / "notes.txt").write_text("hello")
    checkpoints = {"missing_path": not_a_checkpoint / "missing", "not_a_checkpoint": not_a_checkpoint}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name: str) -> subprocess.CompletedProcess:
        ckpt = checkpoints.get(name, memorized_ckpt)
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--checkpoint", str(ckpt), *SUBPROCESS_RUNS[name][0]],
            capture_output=True, text=True, encoding="utf-8", timeout=300, env=env, cwd="/",
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SUBPROCESS_RUNS, pool.map(run, SUBPROCESS_RUNS), strict=True))


@pytest.mark.slow
def test_script_streams_the_greedy_continuation(runs) -> None:
    assert runs["greedy"].returncode == 0, runs["greedy"].stderr
    assert runs["greedy"].stdout == DOCS[0].removeprefix("Hello") + "\n"
    assert "tokens/s" in runs["greedy"].stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ERRORS)
def test_script_bad_input_is_one_error_line_and_exit_2(runs, name: str) -> None:
    out = runs[name]
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and SUBPROCESS_RUNS[name][1] in lines[0], out.stderr


# ---- in-process ------------------------------------------------------------------------------------------------


def cli(capsys, monkeypatch, ckpt: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run inference.cli.main; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["--checkpoint", str(ckpt), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_no_kv_cache_prints_the_same_text(capsys, monkeypatch, memorized_ckpt: Path) -> None:
    cached = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "Hello", *GREEDY)
    recomputed = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "Hello", "--no-kv-cache", *GREEDY)
    assert cached[:2] == recomputed[:2] == (0, DOCS[0].removeprefix("Hello") + "\n")


def test_threads_sets_torch_threads_and_keeps_the_text(capsys, monkeypatch, memorized_ckpt: Path) -> None:
    before = torch.get_num_threads()
    try:
        default = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "Hello", *GREEDY)
        two = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "Hello", "--threads", str(before + 1), *GREEDY)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    assert two[:2] == default[:2] and default[0] == 0


def test_prompt_from_stdin(capsys, monkeypatch, memorized_ckpt: Path) -> None:
    code, out, _ = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "-", *GREEDY, stdin="The\n")
    assert (code, out) == (0, DOCS[1].removeprefix("The") + "\n")


def test_stop_is_repeatable_and_cuts_the_output(capsys, monkeypatch, memorized_ckpt: Path) -> None:
    code, out, err = cli(capsys, monkeypatch, memorized_ckpt, "--prompt", "Hello", "--stop", "zzz", "--stop", "世界",
                         *GREEDY)
    assert (code, out) == (0, " 🎉 world, 你好\n")
    assert "stopped by stop" in err


def test_num_samples_use_consecutive_seeds(capsys, monkeypatch, random_ckpt: Path) -> None:
    sampled = ["--max-new-tokens", "12", "--temperature", "1", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.01",
               "--repetition-penalty", "1.1", "--device", "cpu", "--dtype", "fp32"]
    code, out, _ = cli(capsys, monkeypatch, random_ckpt, "--prompt", "The", "--num-samples", "2", "--seed", "3",
                       *sampled)
    assert code == 0 and "--- sample 1/2 ---" in out and "--- sample 2/2 ---" in out
    second = out.split("--- sample 2/2 ---\n")[1]
    assert cli(capsys, monkeypatch, random_ckpt, "--prompt", "The", "--seed", "4", *sampled)[1] == second


def test_interactive_loop(capsys, monkeypatch, memorized_ckpt: Path) -> None:
    code, out, _ = cli(capsys, monkeypatch, memorized_ckpt, "--interactive", *GREEDY, stdin="def\nHello\n\n")
    assert code == 0
    assert DOCS[2].removeprefix("def") in out and DOCS[0].removeprefix("Hello") in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prompt", "x", "--temperature", "hot"], "--temperature"),
        (["--prompt", "x", "--max-new-tokens", str(MAX_SEQ_LEN)], "--max-new-tokens"),
        (["--prompt", "x", "--num-samples", "0"], "num-samples"),
        (["--prompt", "x", "--threads", "0"], "--threads"),
        (["--prompt", "x", "--dtype", "fp8"], "dtype"),
        (["--prompt", "x", "--stop", ""], "stop"),
        ([], "--prompt"),
    ],
)
def test_other_bad_input_is_one_error_line(capsys, monkeypatch, memorized_ckpt: Path, args, needle: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    try:
        code = main(["--checkpoint", str(memorized_ckpt), *args])
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
