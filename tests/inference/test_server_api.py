"""The OpenAI-compatible API through the official `openai` client against a live server: completions, chat,
streaming, n > 1, stop strings, usage, and every error status."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from inference import Generator, SamplingParams
from tests.inference.serving import KEY, MODEL, running_server, wait_idle

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def url(random_ckpt):
    with running_server(random_ckpt) as running:
        yield running.url


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def reference(random_ckpt) -> Generator:
    return Generator.from_checkpoint(random_ckpt, "cpu", "fp32")


def test_models_and_health(client, url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "running": 0, "waiting": 0, "slots": 4}


def test_completion_greedy_equals_generator(client, reference):
    want = reference.generate("The quick brown", 20, GREEDY)[0]
    got = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=20, temperature=0)
    assert got.object == "text_completion"
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert got.usage.prompt_tokens == len(reference.encode("The quick brown"))
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_completion_stream_joins_to_the_same_text(client, reference):
    want = reference.generate("def add(a, b):", 25, GREEDY)[0]
    chunks = list(client.completions.create(
        model=MODEL, prompt="def add(a, b):", max_tokens=25, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1  # really streamed, not one piece
    assert "".join(texts) == want.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length" if want.finish_reason == "length" else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_stream_ends_with_done(url):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_n_choices_with_a_seed_are_reproducible_and_differ(client, reference):
    sampling = SamplingParams(temperature=1.0, top_p=0.95)
    got = client.completions.create(model=MODEL, prompt="Hello", max_tokens=16, n=3, seed=11, temperature=1.0,
                                    top_p=0.95)
    assert [c.index for c in got.choices] == [0, 1, 2]
    texts = [c.text for c in got.choices]
    assert texts == [reference.generate("Hello", 16, sampling, seed=11 + i)[0].text for i in range(3)]
    assert len(set(texts)) > 1
    again = client.completions.create(model=MODEL, prompt="Hello", max_tokens=16, n=3, seed=11, temperature=1.0,
                                      top_p=0.95)
    assert [c.text for c in again.choices] == texts


def test_several_prompts_in_one_completion_request(client, reference):
    prompts = ["Hello", "print("]
    got = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0, n=2)
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    wants = [reference.generate(p, 8, GREEDY)[0].text for p in prompts]
    assert [c.text for c in got.choices] == [wants[0], wants[0], wants[1], wants[1]]


def test_stop_strings(client, reference):
    full = reference.generate("The quick brown", 40, GREEDY)[0].text
    stops = [full[12:15], full[25:27]]
    got = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=40, temperature=0, stop=stops)
    assert got.choices[0].text == full[: min(full.index(s) for s in stops)]
    assert got.choices[0].finish_reason == "stop"


# ---- errors ----------------------------------------------------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_api_key_is_401(url):
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert _error(e.value)["code"] == "invalid_api_key"
    assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 401


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-9", prompt="Hello", max_tokens=2)
    error = _error(e.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_unknown_route_is_404(url):
    r = httpx.post(f"{url}/v1/engines", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404
    assert "/v1/engines" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"temperature": "hot"}, "temperature"),
        ({"prompt": ""}, "prompt"),
        ({"n": 100}, "n"),  # more sequences than the server holds (4 slots + 8 waiting)
    ],
)
def test_bad_parameter_is_400_naming_it(client, params, param):
    args = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **params}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args)
    assert _error(e.value)["param"] == param


def test_prompt_too_long_is_400_context_length_exceeded(client, reference):
    long_prompt = "hello there " * 200  # far more tokens than max_seq_len (96)
    assert len(reference.encode(long_prompt)) > reference.max_seq_len
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4)
    assert _error(e.value)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:  # the prompt fits, but not with max_tokens
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=reference.max_seq_len)
    error = _error(e.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"


def test_overloaded_is_503_at_once(random_ckpt):
    with running_server(random_ckpt, max_batch=1, max_queue=1, api_key=None) as running:
        url = running.url
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 40, "stream": True}
        running.gate.clear()  # the scheduler holds the first request in the only slot
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as first, \
                httpx.stream("POST", f"{url}/v1/completions", json=body) as second:  # waits in the queue
            assert first.status_code == second.status_code == 200
            deadline = time.monotonic() + 10
            while (load := httpx.get(f"{url}/health").json())["running"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the scheduler has taken the first one (then it waits at the gate)
            assert load == {"status": "ok", "running": 1, "waiting": 1, "slots": 1}
            with pytest.raises(openai.InternalServerError) as e:
                client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
            assert e.value.status_code == 503 and _error(e.value)["code"] == "overloaded"
            running.gate.set()
            assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"
            assert [line for line in second.iter_lines() if line][-1] == "data: [DONE]"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_departed_client_frees_its_slot_at_once(random_ckpt, stream):
    with running_server(random_ckpt, max_batch=1, max_queue=0, api_key=None) as running:
        url, engine = running.url, running.engine
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": 80, "stream": stream}
        running.gate.clear()  # hold the request in its slot (inside its prefill): no token reaches the client
        # The client gives up and closes its connection.
        with pytest.raises(httpx.ReadTimeout), httpx.stream("POST", f"{url}/v1/completions", json=body,
                                                            timeout=1.0) as r:
            for _ in r.iter_lines():
                pass
        assert wait_idle(url) == {"status": "ok", "running": 0, "waiting": 0, "slots": 1}
        running.gate.set()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices[0].finish_reason
        assert engine.steps <= 1  # the departed request never decoded; the 2-token one took one step at most


def test_the_key_is_checked_before_the_body(url):
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "temperature": 9}, headers={"Authorization": "x"})
    assert r.status_code == 401


# ---- chat ------------------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hello world"},
    {"role": "user", "content": "def add(a, b):"},
]


def test_chat_greedy_equals_generator_chat(client, reference):
    want = "".join(reference.chat(CONVERSATION, 30, GREEDY))
    done = reference.last[0]
    got = client.chat.completions.create(model=MODEL, messages=CONVERSATION, max_tokens=30, temperature=0)
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want
    assert got.choices[0].finish_reason == ("length" if done.finish_reason == "length" else "stop")
    assert got.usage.prompt_tokens == done.prompt_tokens
    assert got.usage.completion_tokens == len(done.token_ids)


def test_chat_stream_role_first_then_deltas(client, reference):
    want = "".join(reference.chat(CONVERSATION[-1:], 30, GREEDY))
    chunks = list(client.chat.completions.create(model=MODEL, messages=CONVERSATION[-1:], max_tokens=30,
                                                 temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_n_and_max_completion_tokens(client):
    got = client.chat.completions.create(model=MODEL, messages=CONVERSATION, max_completion_tokens=5, n=2, seed=3)
    assert [c.index for c in got.choices] == [0, 1]
    assert got.usage.completion_tokens <= 10


@pytest.mark.parametrize(
    ("messages", "param"),
    [([], "messages"), ([{"role": "robot", "content": "hi"}], "messages.0.role")],
)
def test_chat_bad_messages_are_400(client, messages, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert _error(e.value)["param"] == param


def test_chat_too_long_is_400(client):
    long = [{"role": "user", "content": "hello there " * 200}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=4)
    assert _error(e.value)["code"] == "context_length_exceeded"
