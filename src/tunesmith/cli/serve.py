"""`tunesmith serve` (OpenAI-compatible API) and `tunesmith webui` (Gradio chat page)."""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_device_arg


def _runs(args: argparse.Namespace) -> dict[str, Any]:
    from ..serving.server import name_runs

    return name_runs(args.run_dir, args.adapter, args.name)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving.server import resolve_api_key, run_server, warn_if_exposed

    runs = _runs(args)
    if args.preflight:
        from ..serving.vllm_backend import check_runs

        report, _, _ = check_runs(runs)
        print(report.to_text())
        return 0 if report.ok else 1
    from ..serving.app import create_app
    from ..serving.server import build_backend, check_port

    check_port(args.host, args.port)  # before the model loads, not after
    if args.backend == "vllm":
        options: dict[str, Any] = {"max_model_len": args.max_model_len} if args.max_model_len else {}
    else:
        options = dict(
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            refill_wait_ms=args.refill_wait_ms,
            max_queue=args.max_queue,
        )
    if args.dtype:
        options["dtype"] = args.dtype
    backend = build_backend(runs, args.backend, device=args.device, **options)
    key = resolve_api_key(args.api_key)
    warn_if_exposed(args.host, key)
    app = create_app(backend, api_key=key, repetition_guard=args.repetition_guard)
    ready = f"serving {', '.join(backend.models)} ({args.backend}) on http://{args.host}:{args.port}/v1" + (
        " — API key required" if key else ""
    )
    run_server(app, args.host, args.port, on_ready=lambda: print(ready, flush=True))
    return 0


def cmd_webui(args: argparse.Namespace) -> int:
    import os

    from ..serving.server import check_port
    from ..webui import parse_auth, run_webui

    auth = parse_auth(args.auth or os.environ.get("TUNESMITH_WEBUI_AUTH"), args.auth_file)
    runs = _runs(args)
    check_port(args.host, args.port)  # before the model loads, not after
    ready = f"web UI for {', '.join(runs)} on http://{args.host}:{args.port}/" + (
        " — user name and password required" if auth else ""
    )
    run_webui(
        runs,
        args.host,
        args.port,
        args.device,
        auth,
        max_batch=args.max_batch,
        dtype=args.dtype,
        on_ready=lambda: print(ready, flush=True),
    )
    return 0


def _common(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("run_dir", help="a run directory written by `tunesmith train`")
    p.add_argument("--name", help="the run's model name (default: the run directory's name)")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=RUN_DIR",
        help="also serve this run's adapter under NAME (repeatable; same base model required)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    add_device_arg(p)
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default: bfloat16 on CUDA, float32 on CPUs; auto: bfloat16 wherever "
        "the hardware computes it natively, which makes CPU batches faster)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="most requests generated together (default 16)")


def add_serve_parsers(sub: Any) -> None:
    """Register `tunesmith serve` and `tunesmith webui` on the top-level subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve run directories over an OpenAI-compatible HTTP API",
        description=(
            "OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions and /v1/completions "
            "(streaming or not), GET /health, GET /metrics. The request's `model` picks an adapter "
            "by name, or `base` for the base model alone. Example: tunesmith serve runs/quickstart "
            "--adapter other=runs/other --port 8000"
        ),
    )
    _common(p, 8000)
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' (default: $TUNESMITH_API_KEY; prefer the variable, "
        "as command lines are visible to other users)",
    )
    p.add_argument(
        "--repetition-guard", action="store_true", help="cut answers that loop (a request may override)"
    )
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="how long a request waits for company")
    p.add_argument(
        "--refill-wait-ms",
        type=float,
        default=300.0,
        help="after a batch of N, how long the next waits for N requests (its clients coming back)",
    )
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before new ones get 429")
    p.add_argument("--max-model-len", type=int, help="vllm: context length (default: the model's)")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="say whether vLLM can load each adapter (and why not), then exit",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "webui",
        help="chat with run directories in a local web page",
        description=(
            "A Gradio chat page: history, streaming, sampling controls, and a side-by-side mode "
            "answering with the base model and the fine-tuned one. Example: tunesmith webui runs/quickstart"
        ),
    )
    _common(p, 7860)
    p.add_argument(
        "--auth",
        metavar="USER:PASS",
        help="require this user name and password (HTTP Basic; default: $TUNESMITH_WEBUI_AUTH; prefer "
        "the variable or --auth-file, as command lines are visible to other users)",
    )
    p.add_argument("--auth-file", metavar="PATH", help="read USER:PASS from the first line of this file")
    p.set_defaults(func=cmd_webui)
