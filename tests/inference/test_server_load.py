"""Bounded load: 32 concurrent streaming clients, a few requests each, on 8 slots and a queue of 8. Every request
completes with its own greedy reply or gets a clean 503, within a time limit; afterwards no slot is held and the
process's memory is back to its level after a warm-up round."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from inference import Generator, SamplingParams
from tests.inference.serving import KEY, MODEL, running_server, wait_idle

CLIENTS, ROUNDS, MAX_TOKENS = 32, 3, 12
TIME_LIMIT_S = 120
MEMORY_SLACK_MB = 32  # allocator noise; a leak of per-request state (caches, queues, tasks) grows far beyond


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def _client(client: openai.AsyncOpenAI, prompts: list[str]) -> list[tuple[str, str | None]]:
    """Stream each prompt in turn: (prompt, reply), reply None for a 503."""
    out = []
    for prompt in prompts:
        try:
            stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS,
                                                     temperature=0, stream=True)
            out.append((prompt, "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])))
        except openai.InternalServerError as e:
            assert e.status_code == 503 and e.response.json()["error"]["code"] == "overloaded"
            out.append((prompt, None))
    return out


async def _load(url: str, prompts: list[list[str]]) -> list[tuple[str, str | None]]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        per_client = await asyncio.wait_for(asyncio.gather(*(_client(client, p) for p in prompts)), TIME_LIMIT_S)
    return [r for rs in per_client for r in rs]


@pytest.mark.slow
def test_32_streaming_clients_get_their_own_replies_or_503(random_ckpt):
    words = ["Hello", "The quick", "def add(", "Coffee", "print(", "the end", "naive", "brown fox"]
    prompts = [[f"{words[(c + r) % len(words)]} {c} {r}" for r in range(ROUNDS)] for c in range(CLIENTS)]
    reference = Generator.from_checkpoint(random_ckpt, "cpu", "fp32")
    wants = {p: reference.generate(p, MAX_TOKENS, SamplingParams(temperature=0))[0].text for ps in prompts for p in ps}
    assert len(set(wants.values())) > len(wants) // 2  # distinct replies: a mix-up between clients would show

    with running_server(random_ckpt, max_batch=8, max_queue=8) as running:
        asyncio.run(_load(running.url, prompts[:8]))  # warm-up: allocator pools, first-use buffers
        before = _rss_mb()
        results = asyncio.run(_load(running.url, prompts))
        health = wait_idle(running.url)
        after = _rss_mb()

    assert len(results) == CLIENTS * ROUNDS
    served = [(p, reply) for p, reply in results if reply is not None]
    assert len(served) >= CLIENTS  # 16 places at a time: most requests are served
    assert all(reply == wants[p] for p, reply in served)
    assert health["running"] == 0 and health["waiting"] == 0
    assert after - before < MEMORY_SLACK_MB
