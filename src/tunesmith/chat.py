"""Terminal chat over a run directory, with history and streaming."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from .generation import Sampling
from .inference import Chatbot

HELP = "commands: /reset clears the history, /exit quits"


def chat_loop(
    bot: Chatbot, sampling: Sampling, read: Callable[[str], str], out: TextIO, base: bool = False
) -> None:
    """Interactive loop: read a line, stream the answer, keep the history."""
    history: list[dict[str, str]] = []
    out.write(f"{HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history.clear()
            out.write("(history cleared)\n")
            continue
        history.append({"role": "user", "content": line})
        out.write("bot> ")
        parts = []
        try:
            for piece in bot.stream(history, sampling, base=base):
                parts.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        out.write("\n")
        history.append({"role": "assistant", "content": "".join(parts).strip()})
