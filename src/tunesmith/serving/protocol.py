"""OpenAI-compatible request and response shapes, validated with pydantic.

Requests are validated strictly (a string where a number belongs is an error, not coerced), every
error leaves as an OpenAI-shaped body ``{"error": {"message", "type", "param", "code"}}``, and no
request field names a file: adapters are fixed when the server starts.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # the OpenAI API's limit on stop sequences
MAX_PROMPTS = 16  # prompts per /v1/completions request


class APIError(Exception):
    """An error to send to the client as an OpenAI-shaped body with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


_ERROR_TYPES = {
    401: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _whole_characters(v: Any) -> Any:
    """Field validator: text holding a lone UTF-16 surrogate (``"\\ud800"`` in JSON) is a 400.

    JSON can spell half of a surrogate pair, but it is no character: no tokenizer can encode it.
    """
    texts = [v] if isinstance(v, str) else [t for t in v if isinstance(t, str)] if isinstance(v, list) else []
    if any(_SURROGATE.search(t) for t in texts):
        raise ValueError("holds a lone UTF-16 surrogate (half an emoji, e.g. \\ud800); send whole characters")
    return v


def _refuse_if_set(v: Any) -> Any:
    """Field validator for accepted-but-unsupported fields: any truthy value is a 400."""
    if v:
        raise _unsupported("this field")
    return v


class _Strict(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send newer fields freely; known fields are typed
    # strictly so that "0.5" for a number is a 400, not a silent coercion.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


def _unsupported(what: str, hint: str = "") -> ValueError:
    return ValueError(f"{what} is not supported by this server{hint}")


class SamplingFields(_Strict):
    """Decoding controls shared by chat and text completions (None: the run card's default)."""

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0 disables top-k")
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    repetition_guard: bool | None = Field(None, description="tunesmith: cut answers that start looping")
    ignore_eos: bool = Field(
        False, description="as in vLLM: generate max_tokens, past end tokens (benchmarks)"
    )

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise _unsupported("n other than 1", "; send several requests (they are batched together)")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None) -> float | None:
        if v:
            raise _unsupported("a non-zero presence/frequency penalty", "; use repetition_penalty")
        return v

    _falsy = field_validator("logprobs", "logit_bias")(_refuse_if_set)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP} non-empty strings")
        return _whole_characters(v)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Strict):
    type: Literal["text"]
    text: str

    _whole = field_validator("text")(_whole_characters)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    _whole = field_validator("content")(_whole_characters)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    response_format: Any = None

    @field_validator("tools", "functions", "tool_choice")
    @classmethod
    def _no_tools(cls, v: Any) -> Any:
        if v and v != "none":
            raise _unsupported("tool / function calling")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if v not in (None, {"type": "text"}):
            raise _unsupported("a response_format other than text")
        return v

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if v[-1].role == "assistant":
            raise _unsupported("a last message from the assistant (continuing an answer)")
        return v

    def conversation(self) -> list[dict[str, str]]:
        """The messages as tunesmith conversation turns ("developer" is the newer name of "system")."""
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="a prompt or a list of prompts (not token ids)")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        return _whole_characters(v)

    _no_echo = field_validator("echo", "suffix")(_refuse_if_set)

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise _unsupported("best_of other than 1")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, parent: str | None, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunesmith", "parent": parent}


class ResponseFactory:
    """Builds the response objects of one request (one id, one creation time)."""

    def __init__(self, kind: Literal["chat", "text"], model: str):
        self.kind = kind
        self.model = model
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj + (".chunk" if chunk and self.kind == "chat" else ""),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def choice(self, index: int, text: str, finish: str | None, extra: dict[str, Any] | None = None) -> dict:
        if self.kind == "chat":
            c = {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            c = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return {**c, **(extra or {})}

    def full(self, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._envelope(choices, False), "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None = None,
        first: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            c = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            c = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._envelope([{**c, **(extra or {})}], True)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope([], True), "usage": usage(prompt_tokens, completion_tokens)}


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """One 400 error from pydantic's error list, naming the first offending field as ``param``."""
    messages: list[str] = []
    param = None
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return APIError(400, f"the request body is not valid JSON ({detail})", code="invalid_json")
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        param = param or loc or None
        messages.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 5:
        messages.append(f"... and {len(errors) - 5} more")
    return APIError(400, "; ".join(messages), param=param, code="invalid_value")
