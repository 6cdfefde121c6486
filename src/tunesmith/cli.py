"""Command line: thin parsing and dispatch; every heavy import happens inside a subcommand."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from .cli_args import add_device_arg, add_sampling_args, sampling_overrides
from .errors import TunesmithError


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import run_train

    cfg = load_config(args.config, args.overrides)
    # A polite kill (SIGTERM: schedulers, `kill`, container stops) ends like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run_dir = run_train(cfg, inputs=[args.config])
    except KeyboardInterrupt:
        from pathlib import Path

        ckpts = Path(cfg.train.output_dir, "checkpoints")
        if ckpts.is_dir() and any(ckpts.glob("checkpoint-*")):
            print(
                f"\ninterrupted. Checkpoints stay in {ckpts}; continue with:\n"
                f"  tunesmith train {args.config} {' '.join(args.overrides)} train.resume=true",
                file=sys.stderr,
            )
        else:
            print("\ninterrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        return 130
    print(f"finished: {run_dir}\nchat with it: tunesmith chat {run_dir}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .chat import chat_loop
    from .inference import load_chatbot

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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune an LLM on your own instruction or role-play data, then chat with it.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="fine-tune a model; writes a run directory",
        description="Fine-tune with LoRA. Example: tunesmith train examples/quickstart.yaml lora.r=16",
    )
    p.add_argument("config", help="YAML config file (see examples/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_chat)

    from .cli_classify import add_classify_parser
    from .cli_data import add_data_parser
    from .cli_eval import add_eval_parser
    from .cli_export import add_export_parser
    from .cli_serve import add_serve_parsers
    from .cli_tune import add_tune_parser

    add_data_parser(sub)
    add_eval_parser(sub)
    add_serve_parsers(sub)
    add_export_parser(sub)
    add_tune_parser(sub)
    add_classify_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tunesmith`` command. Returns the exit status."""
    args = build_parser().parse_args(argv)
    from .logs import setup_cli_logging

    setup_cli_logging(args.verbose)
    try:
        return args.func(args)
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written: say which and why, no traceback
        from .files import os_error_message

        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
