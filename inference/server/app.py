"""The HTTP side: an OpenAI-compatible FastAPI app over an Engine, plus the chat page at `/`.

Handlers run on the event loop and never touch the model: they validate, turn the request into sequences,
submit them to the engine (a full engine answers 503 at once) and relay its events, as one JSON body or as
server-sent events ending with `data: [DONE]`. A client that goes away cancels its request, which frees its
slots before the next decode step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from core.errors import UserError
from inference.chat import ChatTooLongError, reply_end_ids, trim_chat
from inference.sampling import SamplingParams
from inference.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from inference.server.engine import Engine, EngineOverloaded, Failed, Finished, Piece, SeqSpec
from inference.server.protocol import ChatRequest, CompletionRequest, error_body, new_id, now, usage

PAGE = Path(__file__).with_name("static") / "index.html"
DISCONNECT_POLL_S = 0.25  # how often a request checks that its client is still there
_GONE = object()  # put in a request's event queue when its client has disconnected
log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered with OpenAI's error object and an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


@dataclass(frozen=True)
class Job:
    """A validated request: its sequences and how to shape the answer."""

    specs: list[SeqSpec]
    stream: bool
    include_usage: bool
    kind: str  # "text_completion" or "chat.completion"
    prompt_tokens: int  # every prompt counted once (not once per choice), as OpenAI's usage does


def _sampling(body: Any) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p)


def _include_usage(body: Any) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _seed(body: Any) -> int:
    return secrets.randbelow(2**31) if body.seed is None else body.seed


class Server:
    """The app's state: the engine, the served model's name, the API key, the body size limit, and the
    request -> sequences rules."""

    def __init__(self, engine: Engine, model_name: str, api_key: str | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.engine, self.model_name, self.api_key = engine, model_name, api_key
        self.max_body_bytes = max_body_bytes
        self.max_seq_len = engine.model.cfg.max_seq_len
        self.tokenizer = engine.tokenizer

    # ---- checks --------------------------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        """401 unless the request carries the API key (when one is set); runs before the body is validated."""
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not secrets.compare_digest(header.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404, f"the model {name!r} does not exist; this server serves {self.model_name!r}", param="model",
                code="model_not_found",
            )

    def too_long(self, what: str, param: str) -> APIError:
        """413: the prompt alone fills the context, leaving no room for one generated token."""
        return APIError(413, f"this model's context is {self.max_seq_len} tokens; {what}, leaving no room for a reply",
                        param=param, code="context_length_exceeded")

    def fit(self, prompt: list[int], max_tokens: int | None, param: str, tokens_param: str = "max_tokens") -> int:
        """max_tokens for this prompt (None: the rest of the context). A prompt that fills the context is 413;
        a max_tokens that does not fit beside the prompt is a bad parameter, 400 (both context_length_exceeded)."""
        if not prompt:
            raise APIError(400, "the prompt is empty", param=param)
        room = self.max_seq_len - len(prompt)
        if room < 1:
            raise self.too_long(f"the prompt has {len(prompt)}", param)
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                400, f"this model's context is {self.max_seq_len} tokens; the prompt has {len(prompt)} + "
                f"{tokens_param} {max_tokens}", param=tokens_param, code="context_length_exceeded",
            )
        return room if max_tokens is None else max_tokens

    def check_capacity(self, n_seqs: int, param: str) -> None:
        capacity = self.engine.max_batch + self.engine.max_queue
        if n_seqs > capacity:
            raise APIError(400, f"{n_seqs} sequences requested; this server holds at most {capacity}", param=param)

    # ---- requests -> jobs ----------------------------------------------------------------------------------

    def completion_job(self, body: CompletionRequest) -> Job:
        self.check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        n = body.n or 1
        self.check_capacity(len(prompts) * n, "n")
        sampling, seed = _sampling(body), _seed(body)
        specs, prompt_tokens = [], 0
        for text in prompts:
            ids = self.tokenizer.encode(text)
            max_tokens = self.fit(ids, body.max_tokens, "prompt")
            eos = frozenset({self.tokenizer.eos_id})
            specs += [SeqSpec(ids, max_tokens, sampling, tuple(body.stop), eos, seed + i) for i in range(n)]
            prompt_tokens += len(ids)
        return Job(specs, bool(body.stream), _include_usage(body), "text_completion", prompt_tokens)

    def chat_job(self, body: ChatRequest) -> Job:
        self.check_model(body.model)
        n = body.n or 1
        self.check_capacity(n, "n")
        # OpenAI's "developer" role is its newer name for "system".
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        asked = body.max_completion_tokens or body.max_tokens
        tokens_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        try:
            # A history too long for the context loses its oldest turns, as in Generator.chat (never a system
            # message, never the last one), to leave room for max_tokens or, without it, for one token.
            # The ids end with the assistant marker: the reply comes next.
            ids, dropped = trim_chat(self.tokenizer, messages, self.max_seq_len - (asked or 1))
            end_ids = reply_end_ids(self.tokenizer)
        except ChatTooLongError as e:
            if e.tokens >= self.max_seq_len:
                raise self.too_long(str(e), "messages") from None
            raise APIError(400, f"this model's context is {self.max_seq_len} tokens; {e} + {tokens_param} {asked}",
                           param=tokens_param, code="context_length_exceeded") from None
        except UserError as e:  # a conversation the template rejects, or a tokenizer without chat markers
            raise APIError(400, str(e), param="messages") from None
        if dropped:
            log.info("chat history too long for the context: dropped its %d oldest message(s)", dropped)
        max_tokens = self.fit(ids, asked, "messages", tokens_param)
        sampling, seed = _sampling(body), _seed(body)
        specs = [SeqSpec(ids, max_tokens, sampling, tuple(body.stop), end_ids, seed + i) for i in range(n)]
        return Job(specs, bool(body.stream), _include_usage(body), "chat.completion", len(ids))


# ---- events -> answers ----------------------------------------------------------------------------------------


def _submit(engine: Engine, specs: list[SeqSpec], request: Request) -> AsyncIterator[Any]:
    """Submit the sequences now (a full engine answers 503 before any response starts) and return their events.

    The events stop early, cancelling the request, when the client disconnects: a watcher checks every
    DISCONNECT_POLL_S, so a client waiting in the queue or behind a long prefill is noticed too (a stream also
    ends when a write to a departed client fails). Cleanup always cancels: after the request finished that is a
    no-op."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event: Any) -> None:  # on the scheduler thread
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, event)

    try:
        ticket = engine.submit(specs, emit)
    except EngineOverloaded as e:
        raise APIError(503, f"{e}; retry later", "server_error", code="overloaded") from None

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        queue.put_nowait(_GONE)

    async def events() -> AsyncIterator[Any]:
        watcher = asyncio.create_task(watch())
        try:
            remaining = len(specs)
            while remaining:
                event = await queue.get()
                if event is _GONE:
                    return
                if isinstance(event, Finished):
                    remaining -= 1
                yield event
                if isinstance(event, Failed):
                    return
        finally:
            watcher.cancel()
            engine.cancel(ticket)

    return events()


def _choice(kind: str, index: int, text: str, finish_reason: str | None, delta: bool) -> dict[str, Any]:
    if kind == "text_completion":
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if delta:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
                "finish_reason": finish_reason}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


async def answer(server: Server, job: Job, request: Request) -> JSONResponse:
    """The whole answer as one JSON object."""
    texts, reasons = [""] * len(job.specs), [None] * len(job.specs)
    completion_tokens = 0
    async for event in _submit(server.engine, job.specs, request):
        if isinstance(event, Piece):
            texts[event.index] += event.text
        elif isinstance(event, Finished):
            reasons[event.index] = event.reason
            completion_tokens += event.completion_tokens
        else:
            raise APIError(500, event.message, "server_error")
    prefix = "cmpl" if job.kind == "text_completion" else "chatcmpl"
    return JSONResponse({
        "id": new_id(prefix), "object": job.kind, "created": now(), "model": server.model_name,
        "choices": [_choice(job.kind, i, text, reasons[i], delta=False) for i, text in enumerate(texts)],
        "usage": usage(job.prompt_tokens, completion_tokens),
    })


async def stream(server: Server, job: Job, request: Request) -> StreamingResponse:
    """Server-sent events: one chunk per piece of text, a last chunk per choice with its finish_reason."""
    events = _submit(server.engine, job.specs, request)
    chat = job.kind == "chat.completion"
    base = {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion.chunk" if chat else job.kind,
            "created": now(), "model": server.model_name}

    def sse(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

    async def body() -> AsyncIterator[str]:
        completion_tokens = 0
        if chat:  # the role comes first, as OpenAI sends it
            yield sse([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None} for i in range(len(job.specs))])
        try:
            async for event in events:
                if isinstance(event, Piece):
                    yield sse([_choice(job.kind, event.index, event.text, None, delta=True)])
                elif isinstance(event, Finished):
                    completion_tokens += event.completion_tokens
                    yield sse([_choice(job.kind, event.index, "", event.reason, delta=True)])
                else:
                    yield f"data: {json.dumps(error_body(event.message, 'server_error'))}\n\n"
                    return
        finally:
            await events.aclose()
        if job.include_usage:
            yield sse([], usage=usage(job.prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---- the app ------------------------------------------------------------------------------------------------


def create_app(server: Server) -> FastAPI:
    """The FastAPI app: /v1/completions, /v1/chat/completions, /v1/models, /health and the chat page."""
    app = FastAPI(title="Mini-LLM", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=server.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        message = f"unknown route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=e.status_code)

    async def respond(job: Job, request: Request):
        return await (stream if job.stream else answer)(server, job, request)

    key = [Depends(server.check_key)]

    @app.post("/v1/completions", dependencies=key)
    async def completions(body: CompletionRequest, request: Request):
        return await respond(server.completion_job(body), request)

    @app.post("/v1/chat/completions", dependencies=key)
    async def chat_completions(body: ChatRequest, request: Request):
        return await respond(server.chat_job(body), request)

    @app.get("/v1/models", dependencies=key)
    async def models():
        return {"object": "list", "data": [
            {"id": server.model_name, "object": "model", "created": 0, "owned_by": "mini-llm"}
        ]}

    @app.get("/health")
    async def health():
        return {"status": "ok", **server.engine.load()}

    @app.get("/")
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    return app

