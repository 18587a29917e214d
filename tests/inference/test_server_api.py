"""The OpenAI-compatible API through the official `openai` client against a live server: completions, chat,
streaming, n > 1, stop strings, usage, and every error status."""

from __future__ import annotations

import time
import warnings

import httpx
import openai
import pytest

from inference import Generator, SamplingParams
from inference.chat import encode_chat, fit_chat
from inference.errors import HistoryTruncatedWarning
from inference.server.body_limit import DEFAULT_MAX_BODY_BYTES
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


def test_prompt_too_long_is_413_and_too_many_max_tokens_400(client, reference):
    long_prompt = "hello there " * 200  # far more tokens than max_seq_len (96)
    assert len(reference.encode(long_prompt)) > reference.max_seq_len
    for max_tokens in (4, None):
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=max_tokens)
        assert e.value.status_code == 413
        error = _error(e.value)
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:  # the prompt fits, but not with max_tokens: a bad parameter
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=reference.max_seq_len)
    error = _error(e.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"


def test_a_body_over_the_size_limit_is_413_before_parsing(client, url):
    too_big = "x" * (DEFAULT_MAX_BODY_BYTES + 1)
    with pytest.raises(openai.APIStatusError) as e:  # announced by Content-Length: answered unread
        client.completions.create(model=MODEL, prompt=too_big, max_tokens=4)
    assert e.value.status_code == 413 and "limit of 1048576 bytes" in _error(e.value)["message"]

    def chunks():  # no Content-Length: counted as it arrives; not even valid JSON, so nothing parsed it
        for _ in range(DEFAULT_MAX_BODY_BYTES // 4096 + 1):
            yield b"x" * 4096

    r = httpx.post(f"{url}/v1/completions", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and "limit of 1048576 bytes" in r.json()["error"]["message"]
    # Just under the limit is parsed as usual (and refused for its prompt's length, not its size).
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt=too_big[: DEFAULT_MAX_BODY_BYTES - 100], max_tokens=4)
    assert e.value.status_code == 413 and _error(e.value)["param"] == "prompt"


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


def long_history(turns: int) -> list[dict]:
    """A system message, `turns` question/answer pairs and a last question: far over the context (96 tokens)."""
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}: the quick brown fox?"},
                     {"role": "assistant", "content": f"answer {i}: the lazy dog."}]
    return [*messages, {"role": "user", "content": "def add(a, b):"}]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_history_too_long_drops_its_oldest_turns_like_generator_chat(client, reference, stream):
    messages = long_history(10)
    assert len(encode_chat(reference.tokenizer, messages)) > reference.max_seq_len
    with pytest.warns(HistoryTruncatedWarning):
        want = "".join(reference.chat(messages, 12, GREEDY))
    done = reference.last[0]
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                         stream=stream, stream_options={"include_usage": True} if stream else None)
    if stream:
        chunks = list(got)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        text, usage = got.choices[0].message.content, got.usage
    assert text == want
    assert usage.prompt_tokens == done.prompt_tokens <= reference.max_seq_len - 12
    assert usage.completion_tokens == len(done.token_ids)


def test_chat_history_without_max_tokens_keeps_what_leaves_room_for_a_reply(client, reference):
    messages = long_history(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HistoryTruncatedWarning)
        kept = fit_chat(reference.tokenizer, messages, 1, reference.max_seq_len)  # the most history with room for 1
    got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    assert got.usage.prompt_tokens == len(kept)
    assert got.usage.prompt_tokens + got.usage.completion_tokens <= reference.max_seq_len


def test_chat_whose_system_and_last_message_fill_the_context_is_413(client):
    for messages in ([{"role": "user", "content": "hello there " * 200}],
                     [{"role": "system", "content": "hello there " * 200}, {"role": "user", "content": "Hi"}]):
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert e.value.status_code == 413
        error = _error(e.value)
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_max_tokens_that_cannot_fit_beside_the_last_message_is_400(client, reference, field):
    messages = long_history(10)  # the system message and the last one fit, but not with 90 new tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, **{field: reference.max_seq_len - 6})
    error = _error(e.value)
    assert error["code"] == "context_length_exceeded" and error["param"] == field
