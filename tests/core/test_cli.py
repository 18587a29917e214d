"""The entry points' shared contract: bad input is one `error:` line and exit 2, Ctrl-C is 130, bugs keep their
traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import cli
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_user_error_is_one_line_and_exit_2(capsys):
    def bad() -> None:
        raise ConfigError("train.seq_len must be positive, got 0")

    assert cli.run(bad) == 2
    assert capsys.readouterr().err == "error: train.seq_len must be positive, got 0\n"


def test_ctrl_c_is_exit_130(capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert cli.run(interrupted) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_bug_keeps_its_traceback():
    def bug() -> None:
        raise ZeroDivisionError("a real bug")

    with pytest.raises(ZeroDivisionError, match="a real bug"):
        cli.run(bug)


def test_exit_code_passes_through():
    assert cli.run(lambda: 3) == 3
    assert cli.run(lambda: None) == 0


def test_usage_error_is_one_line():
    proc = subprocess.run([sys.executable, "run_train.py", "--no-such-flag"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_binary_config_names_the_file_not_an_unbound_name(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    proc = subprocess.run([sys.executable, "run_train.py", "--config", str(binary)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {binary} is not a YAML text file (it is not valid UTF-8)\n"


@pytest.mark.slow
def test_ctrl_c_during_startup_imports_exits_quietly():
    """SIGINT while the entry point still imports torch: one line, exit 130, no traceback."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # What an entry point does first, then imports that never end (reloading a module), so the signal surely
    # lands inside an import.
    # SIGINT is restored to Python's default first: a job started in the background (as CI may start this suite)
    # inherits it ignored, where a terminal's Ctrl-C would reach it.
    code = ("import importlib, json, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.path.insert(0, '.'); from core import cli; cli.quiet_interrupts(); "
            "print('ready', flush=True)\nwhile True: importlib.reload(json)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave the endless loop behind
        proc.wait()
    assert proc.returncode == 130, err
    assert err == "interrupted\n"
