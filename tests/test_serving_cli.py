"""`tunesmith serve` / `tunesmith webui`: parsing, model names, pre-flight, and a real server process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import pytest

from tunesmith.cli.serve import add_serve_parsers
from tunesmith.errors import ConfigError
from tunesmith.serving.server import name_runs, resolve_api_key

# What `tunesmith` does once cli.py registers these subcommands.
MAIN = (
    "import argparse, sys\n"
    "from tunesmith.cli.serve import add_serve_parsers\n"
    "from tunesmith.logs import setup_cli_logging\n"
    "p = argparse.ArgumentParser(prog='tunesmith'); add_serve_parsers(p.add_subparsers(required=True))\n"
    "a = p.parse_args(sys.argv[1:]); setup_cli_logging(); sys.exit(a.func(a))\n"
)


def parser():
    p = argparse.ArgumentParser(prog="tunesmith")
    add_serve_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_serve_and_webui_parse_with_safe_defaults():
    a = parser().parse_args(["serve", "runs/x", "--adapter", "b=runs/b", "--adapter", "c=runs/c"])
    assert (a.host, a.port, a.backend, a.api_key, a.repetition_guard) == (
        "127.0.0.1",
        8000,
        "transformers",
        None,
        False,
    )
    assert a.adapter == ["b=runs/b", "c=runs/c"]
    w = parser().parse_args(["webui", "runs/x"])
    assert (w.host, w.port) == ("127.0.0.1", 7860)
    for cmd in ("serve", "webui"):
        with pytest.raises(SystemExit) as e:
            parser().parse_args([cmd, "--help"])
        assert e.value.code == 0


def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--adapter",
        "--backend",
        "--host",
        "--port",
        "--api-key",
        "--repetition-guard",
        "--preflight",
    ):
        assert flag in out


def test_model_names(tmp_path):
    runs = name_runs(tmp_path / "quickstart", ["other=runs/other"])
    assert list(runs) == ["quickstart", "other"]
    assert list(name_runs("runs/x", None, name="mine")) == ["mine"]
    for bad in (["noequals"], ["=runs/a"], ["a b=runs/a"], ["x=runs/a", "x=runs/b"], ["base=runs/a"]):
        with pytest.raises(ConfigError):
            name_runs("runs/x", bad)


def test_api_key_from_flag_or_environment(monkeypatch):
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("TUNESMITH_API_KEY", "env-key")
    assert resolve_api_key(None) == "env-key"
    assert resolve_api_key("flag-key") == "flag-key"


def test_preflight_flag_reports_and_exits(tiny_run, capsys):
    a = parser().parse_args(["serve", str(tiny_run), "--backend", "vllm", "--preflight"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "max_lora_rank=8" in out


def test_serve_process_binds_loopback_and_needs_the_key(tiny_run):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from tunesmith.serving.server import free_port

    port = free_port()
    env = {**os.environ, "TUNESMITH_API_KEY": "s3cret", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-c",
        MAIN,
        "serve",
        str(tiny_run),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    out = []
    try:
        for line in proc.stdout:  # the "serving on" line comes only once the socket listens
            out.append(line)
            if line.startswith("serving "):
                break
        assert out and out[-1].startswith("serving "), "".join(out)
        assert httpx.get(url + "/health", timeout=5).status_code == 200  # no retry needed
        body = {"model": tiny_run.name, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        ok = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["completion_tokens"] <= 2
    finally:
        proc.send_signal(signal.SIGINT)
        out.append(proc.communicate(timeout=30)[0])
    text = "".join(out)
    assert f"http://127.0.0.1:{port}/v1" in text and "API key required" in text


@pytest.mark.parametrize("command", ["serve", "webui"])
def test_a_busy_port_fails_before_the_model_loads(tiny_run, monkeypatch, capsys, command):
    import socket

    import tunesmith.serving.server as server
    from tunesmith.cli.main import main

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(server, "build_backend", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([command, str(tiny_run), "--port", str(port), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is in use" in err and "--port" in err
