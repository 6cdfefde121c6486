"""The OpenAI-compatible HTTP API (FastAPI) over any serving backend.

Endpoints: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``,
``POST /v1/chat/completions`` and ``POST /v1/completions`` (both streaming over SSE or not).
Every error is an OpenAI-shaped body with the right 4xx/5xx status, and the server keeps serving.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time, and
# fastapi itself is imported lazily inside create_app.
import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..deps import require
from ..logs import get_logger
from .backends import (
    Backend,
    Event,
    GenRequest,
    ServedModel,
    merge_events,
    model_not_found,
    queue_all,
    sampling_for,
)
from .metrics import ServerMetrics
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFactory,
    error_body,
    model_card,
    validation_error,
)

log = get_logger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_GENERATION = ("/v1/chat/completions", "/v1/completions")
_KNOWN = {"/health", "/metrics", "/v1/models", *_GENERATION}


def fastapi_module() -> Any:
    """FastAPI, or the install line of the serve extra."""
    return require("fastapi", "serve", "serving")


def create_app(
    backend: Backend,
    api_key: str | None = None,
    repetition_guard: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY,
) -> Any:
    """Build the FastAPI app serving ``backend``.

    Args:
        backend: the generation engine and its served models.
        api_key: if set, /v1/* and /metrics need ``Authorization: Bearer <api_key>``.
        repetition_guard: cut looping answers unless a request says otherwise.
        max_body_bytes: larger request bodies get 413.
    """
    fastapi = fastapi_module()
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    metrics = ServerMetrics(backend.queue_depth)
    backend.on_batch = metrics.on_batch
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        backend.start()
        yield
        backend.close()

    app = fastapi.FastAPI(title="tunesmith", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.backend = backend
    app.state.metrics = metrics
    # Outermost last: every request is counted, then authenticated (before its body is read),
    # then its body is read whole under the size limit, declared or chunked.
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_Auth, api_key=api_key)
    app.add_middleware(_Observe, metrics=metrics)

    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(backend.models), "queue_depth": backend.queue_depth()}

    @app.get("/metrics")
    async def prometheus() -> Any:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    base = next((n for n, m in backend.models.items() if m.is_base), None)

    def parent(name: str) -> str | None:
        return None if backend.models[name].is_base else base

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n, parent(n), started) for n in backend.models]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        if name not in backend.models:
            raise model_not_found(name, backend.models)
        return model_card(name, parent(name), started)

    def pick(name: str) -> ServedModel:
        if name not in backend.models:
            raise model_not_found(name, backend.models)
        return backend.models[name]

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: fastapi.Request) -> Any:
        served = pick(req.model)
        gens = _requests(req, served, [served.chat_prompt(req.conversation())], repetition_guard)
        return await respond(request, gens, ResponseFactory("chat", served.name), req.include_usage())

    @app.post("/v1/completions")
    async def complete(req: CompletionRequest, request: fastapi.Request) -> Any:
        served = pick(req.model)
        gens = _requests(req, served, [served.text_prompt(p) for p in req.prompts()], repetition_guard)
        return await respond(request, gens, ResponseFactory("text", served.name), req.include_usage())

    async def respond(request: Any, gens: list[GenRequest], rf: ResponseFactory, include_usage: bool) -> Any:
        streams = await queue_all(backend, gens)
        if gens[0].stream:
            sse = _sse(rf, gens, streams, include_usage, metrics, time.monotonic())
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
        body = await _until_disconnect(request, _complete(rf, gens, streams, metrics))
        return JSONResponse(body)

    return app


def _install_error_handlers(app: Any) -> None:
    """Every error leaves as an OpenAI-shaped body, including FastAPI's own 404/405/422."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Any, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: Any) -> Any:
        err = validation_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: Any) -> Any:
        body = error_body(str(exc.detail), "invalid_request_error", code=str(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Any, exc: Exception) -> Any:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


class _Auth:
    """Check ``Authorization: Bearer <api_key>`` on the API routes and /metrics (none without a key).

    An ASGI middleware rather than a FastAPI dependency: FastAPI parses the body before it runs
    dependencies, so a malformed body from a client without the key got a 400 instead of the 401.
    """

    def __init__(self, app: Any, api_key: str | None):
        self.app = app
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        guarded = (path in _KNOWN and path != "/health") or path.startswith("/v1/models/")
        if scope["type"] != "http" or self.key_digest is None or not guarded:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        # Compare digests in constant time, so neither content nor length leaks through timing.
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.key_digest):
            what = "no API key was given" if not token else "the API key is wrong"
            err = APIError(401, f"{what}; send 'Authorization: Bearer KEY'", code="invalid_api_key")
            return await _send_json(send, err.status, err.body())
        await self.app(scope, receive, send)


def _requests(
    req: Any, served: ServedModel, prompts: list[list[int]], guard_default: bool
) -> list[GenRequest]:
    """One GenRequest per prompt, with the request's sampling over the run's defaults."""
    guard = guard_default if req.repetition_guard is None else req.repetition_guard
    overrides = dict(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
    )
    where = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    return [
        GenRequest(
            served,
            ids,
            sampling_for(served, len(ids), req.token_limit(), where, **overrides),
            req.stop_list(),
            guard,
            req.stream,
            req.ignore_eos,
        )
        for ids in prompts
    ]


def _extra(ev: Event) -> dict[str, Any] | None:
    return {"repeated_phrase": ev.repeated_phrase} if ev.repeated_phrase else None


async def _complete(
    rf: ResponseFactory, gens: list[GenRequest], streams: list[AsyncIterator[Event]], metrics: ServerMetrics
) -> dict[str, Any]:
    texts = [""] * len(gens)
    finals: list[Event] = [Event()] * len(gens)
    async with contextlib.aclosing(merge_events(streams)) as events:
        async for i, ev in events:
            if ev.error:
                raise APIError(500, ev.error, code="generation_failed")
            texts[i] += ev.text
            if ev.finish:
                finals[i] = ev
                metrics.on_answer(rf.model, len(gens[i].prompt_ids), ev.completion_tokens, ev.finish)
    choices = [rf.choice(i, texts[i], finals[i].finish, _extra(finals[i])) for i in range(len(gens))]
    return rf.full(choices, sum(len(g.prompt_ids) for g in gens), sum(f.completion_tokens for f in finals))


async def _sse(
    rf: ResponseFactory,
    gens: list[GenRequest],
    streams: list[AsyncIterator[Event]],
    include_usage: bool,
    metrics: ServerMetrics,
    t0: float,
) -> AsyncIterator[str]:
    def data(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    completion = 0
    first_text = True
    if rf.kind == "chat":
        yield data(rf.chunk(0, "", first=True))
    try:
        async with contextlib.aclosing(merge_events(streams)) as events:
            async for i, ev in events:
                if ev.error:
                    yield data(error_body(ev.error, "server_error", code="generation_failed"))
                    break
                if ev.text:
                    if first_text:
                        metrics.first_token.observe(time.monotonic() - t0)
                        first_text = False
                    yield data(rf.chunk(i, ev.text))
                if ev.finish:
                    completion += ev.completion_tokens
                    metrics.on_answer(rf.model, len(gens[i].prompt_ids), ev.completion_tokens, ev.finish)
                    yield data(rf.chunk(i, None, ev.finish, extra=_extra(ev)))
    except (asyncio.CancelledError, GeneratorExit):
        metrics.abandoned.inc()  # the client hung up; closing the events cancelled the generation
        raise
    if include_usage:
        yield data(rf.usage_chunk(sum(len(g.prompt_ids) for g in gens), completion))
    yield "data: [DONE]\n\n"


async def _until_disconnect(request: Any, work: Any, poll_s: float = 0.5) -> Any:
    """Await ``work``; cancel it (and so its generation) if the client hangs up first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client closed the connection", code="client_closed")
    finally:
        if not task.done():
            task.cancel()


class _BodyLimit:
    """Answer 413 to request bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        too_large = APIError(413, f"the request body is over {self.limit} bytes", code="request_too_large")
        if declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, too_large.status, too_large.body())
        # Read the whole body here, so a chunked one over the limit is a 413 too: raised inside
        # the app's own body reading, it became FastAPI's 400 "error parsing the body".
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _send_json(send, too_large.status, too_large.body())
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for a disconnect, as before
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class _Observe:
    """Count requests by endpoint and status; time the generation endpoints to their last byte."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in _KNOWN else ("/v1/models" if path.startswith("/v1/models/") else "other")
        t0 = time.monotonic()
        status = 500

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if endpoint in _GENERATION:
                self.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
