"""A real server for the tests: uvicorn on 127.0.0.1 (a free port) in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from inference import Generator
from inference.server import Engine, Server, create_app
from model import Transformer

MODEL = "tiny"
KEY = "test-key"


def gate(model: Transformer) -> threading.Event:
    """Make every forward of `model` wait until the returned event is set (it starts set). Closing the gate holds
    the scheduler inside a step, so a test can fill the slots and the queue without racing a fast tiny model."""
    event = threading.Event()
    event.set()
    forward = model.forward

    def gated_forward(*args, **kwargs):
        assert event.wait(timeout=30), "the gate stayed closed"
        return forward(*args, **kwargs)

    model.forward = gated_forward
    return event


def served_engine(ckpt: Path, max_batch: int, max_queue: int) -> tuple[Engine, threading.Event]:
    """A started engine on its own copy of the checkpoint's model (fp32 on CPU), and the gate of its model."""
    served = Generator.from_checkpoint(ckpt, "cpu", "fp32")
    return Engine(served.model, served.tokenizer, max_batch, max_queue).start(), gate(served.model)


@dataclass
class Running:
    url: str
    engine: Engine
    gate: threading.Event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    ckpt: Path, max_batch: int = 4, max_queue: int = 8, api_key: str | None = KEY
) -> Iterator[Running]:
    """Serve the checkpoint (its own model copy, fp32 on CPU); stop it afterwards."""
    engine, model_gate = served_engine(ckpt, max_batch, max_queue)
    port = free_port()
    config = uvicorn.Config(create_app(Server(engine, MODEL, api_key)), host="127.0.0.1", port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield Running(url, engine, model_gate)
    finally:
        model_gate.set()
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def wait_idle(url: str, timeout_s: float = 10) -> dict:
    """/health once no sequence runs or waits (cancellations land at the next scheduler step)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{url}/health").json()
        if (health["running"] == 0 and health["waiting"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.02)
