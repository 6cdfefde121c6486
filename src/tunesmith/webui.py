"""A Gradio chat page over a run directory: history, streaming, sampling controls, base vs fine-tuned.

The page talks to the same serving backend as the API (``tunesmith.serving``), so answers use the
run card's template, system prompt and end token, concurrent visitors are batched together, and
the side-by-side mode streams the base model's and the fine-tuned model's answers at once (one
mixed-adapter batch). It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .deps import require
from .errors import UsageError
from .logs import get_logger
from .serving.backends import Backend, GenRequest, merge_events, queue_all, sampling_for
from .serving.protocol import APIError

log = get_logger(__name__)

# No font from the internet (the default theme fetches some on every page view): system fonts,
# then a CJK font the app serves itself, so Chinese shows on machines without CJK fonts (servers,
# containers, headless browsers) instead of empty boxes.
CJK_FAMILY = "tunesmith CJK"
CJK_ROUTE = "/tunesmith-fonts/noto-sans-sc.ttf"
_FONTS = ["ui-sans-serif", "system-ui", "Noto Sans CJK SC", CJK_FAMILY, "sans-serif"]
_MONO = ["ui-monospace", "monospace", CJK_FAMILY]


def cjk_font_file() -> Path | None:
    """Noto Sans SC (SIL Open Font License) from the ``justmytype-intl-cjk`` package, if installed."""
    try:
        from importlib.resources import files

        font = files("justmytype_intl_cjk") / "fonts" / "ofl" / "notosanssc" / "NotoSansSC[wght].ttf"
    except ImportError:
        return None
    path = Path(str(font))
    return path if path.is_file() else None


def _font_css() -> str:
    return (
        f'@font-face {{ font-family: "{CJK_FAMILY}"; src: url("{CJK_ROUTE}") format("truetype"); '
        "font-display: swap; }"
    )


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    return require("gradio", "webui", "the web UI")


def _turns(history: list[Any]) -> list[dict[str, str]]:
    """Gradio chat messages (dicts or message objects) → plain conversation turns."""
    out = []
    for m in history or []:
        role = m["role"] if isinstance(m, dict) else m.role
        content = m["content"] if isinstance(m, dict) else m.content
        out.append({"role": role, "content": content if isinstance(content, str) else str(content)})
    return out


def build_webui(backend: Backend, title: str = "tunesmith") -> Any:
    """The Gradio Blocks page for ``backend``'s models (the first one is the fine-tuned default)."""
    gr = _gradio()
    names = list(backend.models)
    tuned = [n for n in names if not backend.models[n].is_base]
    base = next((n for n in names if backend.models[n].is_base), None)
    first = backend.models[tuned[0] if tuned else names[0]]
    d = first.bot.defaults

    with gr.Blocks(title=title) as page:
        gr.Markdown(_header(title, first))
        with gr.Row():
            model = gr.Dropdown(names, value=first.name, label="model", elem_id="model", scale=2)
            compare = gr.Checkbox(
                False,
                label=f"side by side: {base} vs the chosen model",
                elem_id="compare",
                scale=1,
                visible=base is not None,  # a merged export has no base model to compare with
            )
        with gr.Row():
            chat_base = gr.Chatbot(label=base or "base", visible=False, elem_id="chat-base", height=420)
            chat = gr.Chatbot(label="answer", elem_id="chat-main", height=420)
        with gr.Row():
            prompt = gr.Textbox(
                placeholder="Type a message, Enter to send", show_label=False, elem_id="prompt", scale=5
            )
            send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
            clear = gr.Button("Clear", elem_id="clear", scale=1)
        with gr.Accordion("Sampling", open=False, elem_id="sampling"):
            with gr.Row():
                temperature = gr.Slider(0, 2, d.temperature, step=0.05, label="temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, d.top_p, step=0.05, label="top_p")
                top_k = gr.Slider(0, 200, d.top_k, step=1, label="top_k (0 = off)")
            with gr.Row():
                penalty = gr.Slider(1, 2, d.repetition_penalty, step=0.05, label="repetition penalty")
                limit = min(first.context_len, 4096)
                max_tokens = gr.Slider(
                    1, limit, min(d.max_new_tokens, limit), step=1, label="max tokens", elem_id="max-tokens"
                )
                guard = gr.Checkbox(False, label="cut answers that loop (repetition guard)")

        async def respond(message: str, main: list, left: list, name: str, both: bool, *knobs: Any) -> Any:
            if not message or not message.strip():
                yield gr.update(), main, left
                return
            histories = [_turns(main)] + ([_turns(left)] if both else [])
            chosen = [name] + ([base] if both else [])
            try:
                asks = [
                    _request(backend, m, h + [{"role": "user", "content": message}], knobs)
                    for m, h in zip(chosen, histories, strict=True)
                ]
                streams = await queue_all(backend, asks)
            except APIError as e:
                gr.Warning(e.message)
                yield gr.update(), main, left
                return
            for h in histories:
                h += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            shown = lambda: (histories[0], histories[1] if both else left)  # noqa: E731
            yield "", *shown()
            async for i, ev in merge_events(streams):
                if ev.error:
                    histories[i][-1]["content"] += f"\n\n[error: {ev.error}]"
                else:
                    histories[i][-1]["content"] += ev.text
                    if ev.finish == "repetition":
                        histories[i][-1]["content"] += " […]"
                yield "", *shown()

        inputs = [
            prompt,
            chat,
            chat_base,
            model,
            compare,
            temperature,
            top_p,
            top_k,
            penalty,
            max_tokens,
            guard,
        ]
        outputs = [prompt, chat, chat_base]
        # No Gradio concurrency limit: the backend queues and batches visitors itself.
        sent = send.click(respond, inputs, outputs, concurrency_limit=None)
        submitted = prompt.submit(respond, inputs, outputs, concurrency_limit=None)
        # Clear first stops any answer still streaming (closing the stream cancels its generation),
        # then empties the chats: cleared first, the stream's next chunk would write the old
        # conversation back.
        clear.click(None, None, None, cancels=[sent, submitted]).then(
            lambda: ([], []), None, [chat, chat_base]
        )
        compare.change(lambda on: gr.update(visible=on), compare, chat_base)
        model.change(lambda n: gr.update(label=n), model, chat)
        page.load(lambda n: gr.update(label=n), model, chat)
    return page


def _request(backend: Backend, name: str, conversation: list[dict[str, str]], knobs: tuple) -> GenRequest:
    temperature, top_p, top_k, penalty, max_tokens, guard = knobs
    served = backend.models[name]
    ids = served.chat_prompt(conversation)
    room = served.context_len - len(ids)  # the slider is clamped to what the context leaves
    sampling = sampling_for(
        served,
        len(ids),
        max(1, min(int(max_tokens), room)),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        repetition_penalty=float(penalty),
    )
    return GenRequest(served, ids, sampling, guard=bool(guard), stream=True)


def _header(title: str, first: Any) -> str:
    card = first.bot.card
    source = card.base_model.get("source", "?") if card else "?"
    system = (card.system_prompt or "(none)") if card else "(none)"
    return f"## {title}\nbase model `{source}` · run `{first.run_dir.name}` · system prompt: {system}"


class BasicAuth:
    """HTTP Basic authentication in front of every route of the page (its API and queue too).

    An ASGI middleware, so it holds for whatever Gradio serves; the browser asks once and sends
    the credentials with every later request. Both parts are compared in constant time.
    """

    def __init__(self, app: Any, user: str, password: str):
        self.app = app
        self.expected = hashlib.sha256(f"{user}:{password}".encode()).digest()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = b"authentication required"
        headers = [
            (b"www-authenticate", b'Basic realm="tunesmith", charset="UTF-8"'),
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Any) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except ValueError:
            given = b""
        ok = hmac.compare_digest(hashlib.sha256(given).digest(), self.expected)
        return scheme.lower() == b"basic" and ok


def parse_auth(spec: str | None, path: str | None = None) -> tuple[str, str] | None:
    """``USER:PASS`` from ``spec``, or from the first line of the file ``path``; None if neither.

    Raises:
        UsageError: not of the form USER:PASS, or the file cannot be read.
    """
    where = "--auth"
    if path:
        where = f"--auth-file {path}"
        try:
            spec = Path(path).read_text(encoding="utf-8").splitlines()[0] if Path(path).stat().st_size else ""
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{where}: cannot read the password file ({e})") from None
    if spec is None:
        return None
    user, sep, password = spec.strip().partition(":")
    if not sep or not user or not password:
        raise UsageError(f"{where}: give USER:PASS (a user name, a colon, a password)")
    return user, password


def create_webui_app(backend: Backend, title: str = "tunesmith", auth: tuple[str, str] | None = None) -> Any:
    """An ASGI app serving the page at ``/`` (and starting/stopping ``backend`` with it).

    ``auth``: (user, password) required through HTTP Basic authentication on every route.
    """
    import contextlib

    from .serving.app import fastapi_module

    gr = _gradio()
    fastapi = fastapi_module()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        backend.start()
        yield
        backend.close()

    app = fastapi.FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if auth is not None:
        app.add_middleware(BasicAuth, user=auth[0], password=auth[1])
    font = cjk_font_file()
    if font is not None:  # a fixed file: nothing from the request names a path

        @app.get(CJK_ROUTE, include_in_schema=False)
        def cjk_font() -> Any:
            return fastapi.responses.FileResponse(
                font, media_type="font/ttf", headers={"Cache-Control": "public, max-age=86400"}
            )

    else:
        log.info("no CJK font to serve (pip install justmytype-intl-cjk): Chinese needs the browser's own")
    theme = gr.themes.Soft(font=_FONTS, font_mono=_MONO)
    css = _font_css() if font is not None else None
    return gr.mount_gradio_app(
        app, build_webui(backend, title), path="/", theme=theme, css=css, ssr_mode=False
    )


def run_webui(
    runs: dict[str, str | Path],
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    auth: tuple[str, str] | None = None,
    on_ready: Callable[[], None] | None = None,
    **options: Any,
) -> None:
    """Load ``runs`` (name → run dir) and serve the page until interrupted (``auth``: see above;
    ``on_ready`` runs once the page is listening)."""
    from .serving.server import build_backend, run_server

    backend = build_backend(runs, "transformers", device=device, **options)
    if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        log.warning(
            "the web UI listens on %s without --auth: anyone who can reach it can use the model", host
        )
    title = f"tunesmith · {next(iter(runs))}"
    run_server(create_webui_app(backend, title, auth), host, port, on_ready=on_ready)
