"""What every serving backend shares: the served models, a generation request, its events.

A backend turns ``GenRequest``s into a stream of ``Event``s. Prompts are rendered here, from each
run's own chat template and system prompt, so every backend answers exactly as the run was
trained, and the request checks (context length, token limits) are the same everywhere.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..generation import Sampling
from ..runtime.chatbot import Chatbot
from .guard import RepetitionGuard, TextTracker
from .protocol import APIError

BASE_NAME = "base"


@dataclass
class ServedModel:
    """One name a request's ``model`` field can pick.

    Attributes:
        name: the public model name.
        bot: the run's template, system prompt, stop tokens and sampling defaults.
        adapter: the engine's adapter name; None when there is no adapter to switch to (the base
            model, or a run with full weights or a merged export).
        run_dir: the run directory it comes from.
        context_len: the most tokens (prompt + answer) the model takes.
        is_base: the base model alone, with the fine-tuning switched off.
    """

    name: str
    bot: Chatbot
    adapter: str | None
    run_dir: Path
    context_len: int
    is_base: bool = False

    def chat_prompt(self, conversation: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation (with the run's system prompt) and the answer prompt."""
        return self.bot.fmt.encode_prompt(self.bot.with_system(conversation))

    def text_prompt(self, text: str) -> list[int]:
        """Token ids of a raw text prompt (no chat template)."""
        return self.bot.fmt.tokenizer(text)["input_ids"]

    def stop_ids(self) -> list[int]:
        return self.bot.stop_ids()

    def decode(self, ids: list[int]) -> str:
        return self.bot.fmt.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class GenRequest:
    """One answer to generate. ``sampling.max_new_tokens`` is this answer's token limit."""

    model: ServedModel
    prompt_ids: list[int]
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    guard: bool = False
    stream: bool = False
    ignore_eos: bool = False

    def stop_ids(self) -> list[int]:
        """Token ids that end this answer (none when ``ignore_eos``)."""
        return [] if self.ignore_eos else self.model.stop_ids()

    def tracker(self) -> TextTracker:
        return TextTracker(self.stop, RepetitionGuard() if self.guard else None, self.stream)


@dataclass
class Event:
    """A piece of an answer. The last event of an answer has ``finish`` set.

    Attributes:
        text: new text (streaming), or the whole answer on the final event when not streaming.
        finish: "stop" (end token or stop string), "length" (token limit), "repetition" (guard).
        completion_tokens: tokens generated so far (final event: in total).
        repeated_phrase: the phrase the repetition guard caught.
        error: set when generation failed; the answer ends there.
    """

    text: str = ""
    finish: str | None = None
    completion_tokens: int = 0
    repeated_phrase: str | None = None
    error: str | None = None


class QueueFull(APIError):
    def __init__(self, depth: int):
        super().__init__(429, f"the server has {depth} requests waiting; retry shortly", code="queue_full")


class Backend(abc.ABC):
    """A generation engine serving ``models`` by name."""

    def __init__(self, models: dict[str, ServedModel]):
        self.models = models
        self.on_batch: Any = None  # called with (rows, generated tokens, seconds) after each batch

    @abc.abstractmethod
    def start(self) -> None:
        """Start background work (worker threads, engines). Idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop background work; waiting requests end with an error event."""

    @abc.abstractmethod
    def queue_depth(self) -> int:
        """Requests waiting for a batch slot."""

    @abc.abstractmethod
    def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        """Queue one answer now and return its events; ``aclose()`` on the iterator cancels it.

        Call from a running event loop.

        Raises:
            QueueFull: too many requests are waiting.
        """

    def info(self) -> dict[str, Any]:
        return {"backend": type(self).__name__}


def model_not_found(name: str, models: dict[str, ServedModel]) -> APIError:
    return APIError(
        404,
        f"the model {name!r} does not exist here; served models: {', '.join(models)}",
        param="model",
        code="model_not_found",
    )


def sampling_for(
    model: ServedModel,
    prompt_len: int,
    max_tokens: int | None = None,
    prompt_param: str = "messages",
    **overrides: Any,
) -> Sampling:
    """Sampling settings: ``overrides`` (temperature, top_p, top_k, repetition_penalty, seed; None
    keeps the run card's default) with the answer's token limit checked against the context.

    Raises:
        APIError: the prompt, or the prompt plus ``max_tokens``, does not fit in the context.
    """
    ctx = model.context_len
    if prompt_len >= ctx:
        raise APIError(
            400,
            f"this model's maximum context length is {ctx} tokens, and the prompt has {prompt_len}",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if max_tokens is not None and prompt_len + max_tokens > ctx:
        raise APIError(
            400,
            f"this model's maximum context length is {ctx} tokens; you asked for {prompt_len + max_tokens} "
            f"({prompt_len} in the prompt, {max_tokens} for the answer). Lower max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if overrides.get("top_k") is not None:
        overrides["top_k"] = max(overrides["top_k"], 0)  # OpenAI-style -1 means "off", as 0 does here
    s = model.bot.defaults.updated(max_new_tokens=max_tokens, **overrides)
    return s.updated(max_new_tokens=min(s.max_new_tokens, ctx - prompt_len))


async def queue_all(backend: Backend, gens: list[GenRequest]) -> list[AsyncIterator[Event]]:
    """Queue every answer now, all or none (a full queue raises before any response starts)."""
    streams: list[Any] = []
    try:
        for g in gens:
            streams.append(backend.generate(g))
    except BaseException:
        for s in streams:
            await s.aclose()
        raise
    return streams


async def merge_events(streams: list[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """Events of several answers as they come, tagged with the answer's index. Closing this
    iterator closes (and so cancels) every answer still running."""
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Event]) -> None:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for ev in stream:
                await queue.put((i, ev))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, ev = await queue.get()
            yield i, ev
            left -= bool(ev.finish or ev.error)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
