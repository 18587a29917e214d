"""run_inference.py --chat: a streamed multi-turn conversation read from stdin, history kept across turns."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inference.cli import main
from tests.inference.conftest import GREETING

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "run_inference.py"
GREEDY = ["--temperature", "0", "--max-new-tokens", "40", "--device", "cpu"]


def run_script(ckpt: Path, args: list[str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint", str(ckpt), *args], input=stdin, capture_output=True,
        text=True, encoding="utf-8", timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd="/",
    )


@pytest.fixture(scope="module")
def runs(chat_ckpt: Path, no_chat_ckpt: Path) -> dict[str, subprocess.CompletedProcess]:
    jobs = {
        # The second reply depends on the first turn: "And then?" alone gets "Coffee and tea."
        "conversation": (chat_ckpt, ["--chat", *GREEDY], "Hello\nAnd then?\n\n"),
        "eof": (chat_ckpt, ["--chat", *GREEDY], "And then?\n"),
        "no_chat_tokens": (no_chat_ckpt, ["--chat", *GREEDY], "Hello\n"),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_script, *job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.slow
def test_conversation_keeps_history_and_streams_replies(runs) -> None:
    out = runs["conversation"]
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"> {GREETING}\n> The end of the story.\n> "
    assert out.stderr.count("stopped by end of turn") == 2


@pytest.mark.slow
def test_end_of_input_quits(runs) -> None:
    out = runs["eof"]
    assert (out.returncode, out.stdout) == (0, "> Coffee and tea.\n> \n"), out.stderr


@pytest.mark.slow
def test_checkpoint_without_chat_tokens_is_one_clear_error(runs, no_chat_ckpt: Path) -> None:
    out = runs["no_chat_tokens"]
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "has no chat tokens" in lines[0]
    assert f"scripts/add_chat_tokens.py --checkpoint {no_chat_ckpt} --out NEW_DIR" in lines[0]


def cli(capsys, monkeypatch, ckpt: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run inference.cli.main in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = main(["--checkpoint", str(ckpt), *args])
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prompt_answers_one_message_and_exits(capsys, monkeypatch, chat_ckpt: Path) -> None:
    code, out, err = cli(capsys, monkeypatch, chat_ckpt, "--chat", "--prompt", "And then?", *GREEDY,
                         stdin="Hello\n")
    assert (code, out) == (0, "Coffee and tea.\n")
    assert "stopped by end of turn" in err


def test_system_message(capsys, monkeypatch, chat_ckpt: Path) -> None:
    code, out, _ = cli(capsys, monkeypatch, chat_ckpt, "--chat", "--system", "Be terse.", *GREEDY, stdin="Hello\n\n")
    assert (code, out) == (0, "> Done and dusted.\n> ")
    code, out, _ = cli(capsys, monkeypatch, chat_ckpt, "--chat", "--system", "Be terse.", "--prompt", "-", *GREEDY,
                       stdin="Hello\n")
    assert (code, out) == (0, "Done and dusted.\n")


def test_a_message_too_long_does_not_end_the_conversation(capsys, monkeypatch, chat_ckpt: Path) -> None:
    code, out, err = cli(capsys, monkeypatch, chat_ckpt, "--chat", *GREEDY,
                         stdin="the quick brown fox " * 20 + "\nAnd then?\n\n")
    assert code == 0 and out.endswith("> Coffee and tea.\n> ")
    assert "error: the system message(s) and the last message take" in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--system", "x", "--prompt", "y"], "--system needs --chat"),
    (["--chat", "--interactive"], "--interactive does not apply to --chat"),
    (["--chat", "--num-samples", "2"], "--num-samples does not apply to --chat"),
    (["--chat", "--bos"], "--bos does not apply to --chat"),
])
def test_flag_clashes_are_one_error_line(capsys, monkeypatch, chat_ckpt: Path, args, needle) -> None:
    code, out, err = cli(capsys, monkeypatch, chat_ckpt, *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
