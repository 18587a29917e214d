"""run_server.py as a user runs it: a real process on loopback that answers the openai client and stops cleanly
on Ctrl-C (SIGINT); bad flags and checkpoints are one `error:` line and exit code 2."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from inference.server.cli import main
from tests.inference.serving import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--max-queue", "-1"], "--max-queue"),
        (["--port", "70000"], "--port"),
        (["--dtype", "fp8"], "fp8"),
        (["--max-batch", "many"], "--max-batch"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
    ],
)
def test_bad_flags_are_one_error_line(random_ckpt, capsys, args, needle):
    try:
        code = main(["--checkpoint", str(random_ckpt), *args])
    except SystemExit as e:  # argparse's own errors exit from parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err


@pytest.mark.slow
def test_serves_on_loopback_and_stops_on_ctrl_c(random_ckpt):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "run_server.py", "--checkpoint", str(random_ckpt), "--port", str(port), "--api-key", "k",
         "--max-batch", "2", "--device", "cpu", "--max-body-bytes", "2000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        assert httpx.get(f"{url}/health").json()["slots"] == 2
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=30)
        model = Path(random_ckpt).name  # the default model id
        assert [m.id for m in client.models.list().data] == [model]
        reply = client.completions.create(model=model, prompt="Hello", max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens <= 5 and reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.APIStatusError) as e:  # --max-body-bytes 2000: a 2 kB prompt is refused unread
            client.completions.create(model=model, prompt="x" * 2000, max_tokens=5)
        assert e.value.status_code == 413 and "--max-body-bytes" in e.value.response.json()["error"]["message"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully; depending on its version it then re-raises the signal (exit 130).
        assert proc.returncode in (0, 130) and "Traceback" not in stderr, stderr
        assert f"http://127.0.0.1:{port}" in stderr  # bound to loopback by default
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
