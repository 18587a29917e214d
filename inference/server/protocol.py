"""The OpenAI API's request bodies (validated by pydantic) and response objects, for the subset served here.

Field names, defaults and ranges follow OpenAI's API reference; fields this server has no use for (user,
logit_bias, ...) are accepted and ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # OpenAI accepts up to 4 stop sequences


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the usage and no choices


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(validate_default=True)  # `stop` always becomes a list
    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None  # default 1; 0 is greedy
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None  # default 1
    n: Annotated[int, Field(ge=1, le=128)] | None = None  # choices per prompt, default 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None  # choice i uses seed + i; without it every request draws a fresh seed
    frequency_penalty: float | None = None  # accepted for compatibility; only 0 (or none) is supported
    presence_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("only 0 is supported")
        return value


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one prompt")
        return value


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # default: the rest of the context
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's newer name for max_tokens


ChatMessage.model_rebuild()


# ---- responses ----------------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
