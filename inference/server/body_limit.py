"""A cap on request body size, applied before anything reads or parses the body: 413 with OpenAI's error object.

A request that announces a larger Content-Length is answered at once, unread; a body sent without one (chunked)
is counted as it arrives and refused as soon as it passes the limit, so at most the limit is ever buffered.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.server.protocol import error_body

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a chat history of some 250k tokens


def too_large_message(limit: int) -> str:
    return f"the request body exceeds this server's limit of {limit} bytes (run_server.py --max-body-bytes)"


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get HTTP 413."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(error_body(too_large_message(self.max_bytes), "invalid_request_error"), 413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body reading untouched; the app's handler for
                    # it answers with the same error object as above.
                    raise HTTPException(413, too_large_message(self.max_bytes))
            return message

        await self.app(scope, counted, send)
