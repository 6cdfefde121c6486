"""`tunesmith chat RUN_DIR`: terminal chat over a run directory, with history and streaming."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .args import add_device_arg, add_sampling_args, sampling_overrides

if TYPE_CHECKING:
    from ..generation import Sampling
    from ..runtime.chatbot import Chatbot

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


def cmd_chat(args: argparse.Namespace) -> int:
    from ..runtime.chatbot import load_chatbot

    bot = load_chatbot(args.run_dir, device=args.device, base_only=args.base and not args.compare)
    sampling = bot.defaults.updated(**sampling_overrides(args))
    if not args.prompt:
        chat_loop(bot, sampling, input, sys.stdout, base=args.base)
        return 0
    for prompt in args.prompt:
        msgs = [{"role": "user", "content": prompt}]
        if args.compare:
            print(f"Q: {prompt}")
            print(f"  base:       {bot.answer(msgs, sampling, base=True)}")
            print(f"  fine-tuned: {bot.answer(msgs, sampling)}")
        else:
            for piece in bot.stream(msgs, sampling, base=args.base):
                print(piece, end="", flush=True)
            print()
    return 0


def add_chat_parser(sub: Any) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a trained run directory in the terminal",
        description="Chat with a run directory; template and system prompt come from its run card.",
    )
    p.add_argument("run_dir", help="a run directory (from train) or an export folder (from export)")
    p.add_argument("--prompt", action="append", help="answer this and exit (repeatable)")
    p.add_argument("--base", action="store_true", help="answer with the base model alone")
    p.add_argument("--compare", action="store_true", help="with --prompt: print base and fine-tuned answers")
    add_device_arg(p)
    add_sampling_args(
        p, "sampling (defaults come from the run card)", "sampling seed for reproducible answers"
    )
    p.set_defaults(func=cmd_chat)
