"""Build a backend from run directories and run the API server (blocking, or in a thread)."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..deps import require
from ..errors import ConfigError, UsageError
from ..logs import get_logger
from ..registry import Registry
from .backends import BASE_NAME, Backend

log = get_logger(__name__)

API_KEY_ENV = "TUNESMITH_API_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# name -> factory(runs, base_name=..., device=..., **options) -> Backend; heavy imports stay inside.
BACKENDS: Registry[Any] = Registry("serving backend")


@BACKENDS.register("transformers")
def _transformers(runs: dict[str, str | Path], base_name: str, device: str, **kw: Any) -> Backend:
    from .transformers_backend import TransformersBackend

    return TransformersBackend.from_runs(runs, base_name=base_name, device=device, **kw)


@BACKENDS.register("vllm")
def _vllm(runs: dict[str, str | Path], base_name: str, device: str, **kw: Any) -> Backend:
    from .vllm_backend import VllmBackend

    return VllmBackend.from_runs(runs, base_name=base_name, device=device, **kw)


def name_runs(
    run_dir: str | Path, adapters: list[str] | None = None, name: str | None = None
) -> dict[str, Path]:
    """``RUN_DIR`` plus ``NAME=RUN_DIR`` pairs → {name: run dir}; the first is RUN_DIR's (its folder name).

    Raises:
        ConfigError: a malformed pair, an invalid or repeated name.
    """
    runs: dict[str, Path] = {}
    problems = []
    pairs = [(name or Path(run_dir).resolve().name, str(run_dir))]
    for spec in adapters or []:
        key, sep, path = spec.partition("=")
        if not sep or not path:
            problems.append(f"--adapter {spec!r}: expected NAME=RUN_DIR")
            continue
        pairs.append((key, path))
    for key, path in pairs:
        if not _NAME.match(key):
            problems.append(f"model name {key!r}: use letters, digits and . _ : - (at most 64)")
        elif key in runs or key == BASE_NAME:
            problems.append(f"model name {key!r} is used twice (the base model is {BASE_NAME!r})")
        runs[key] = Path(path)
    if problems:
        raise ConfigError(problems, "the served models")
    return runs


def build_backend(
    runs: dict[str, str | Path], backend: str = "transformers", device: str = "auto", **options: Any
) -> Backend:
    """Load ``runs`` (name → run dir; adapters of one base model) into the named backend."""
    return BACKENDS.get(backend)(runs, base_name=BASE_NAME, device=device, **options)


def resolve_api_key(given: str | None) -> str | None:
    """``--api-key`` if given, else ``TUNESMITH_API_KEY``, else None (no key needed)."""
    return given or os.environ.get(API_KEY_ENV) or None


def _uvicorn() -> Any:
    return require("uvicorn", "serve", "serving")


def warn_if_exposed(host: str, api_key: str | None) -> None:
    if host not in _LOOPBACK and not api_key:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", host)


def check_port(host: str, port: int) -> None:
    """Fail now, before minutes of model loading, if ``host:port`` cannot be listened on.

    Raises:
        UsageError: the port is taken (or the address is not this machine's), saying which.
    """
    import errno

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(f"--host {host}: not an address this machine can listen on ({e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            s.bind(addr)
        except OSError as e:
            why = (
                "is in use (another server?)"
                if e.errno == errno.EADDRINUSE
                else f"cannot be used ({e.strerror})"
            )
            raise UsageError(f"{host}:{port} {why}; choose another with --port") from None


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve ``app`` until interrupted; ``on_ready`` runs once the socket is bound and listening."""
    uvicorn = _uvicorn()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_ready is not None:
        startup = server.startup

        async def announce_after_startup(sockets: Any = None) -> None:
            await startup(sockets=sockets)
            if server.started:
                on_ready()

        server.startup = announce_after_startup
    server.run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """An ASGI app served by uvicorn in a background thread (tests, benchmarks, notebooks).

    Use as a context manager; ``url`` is where it listens.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None):
        uvicorn = _uvicorn()
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="tunesmith-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
