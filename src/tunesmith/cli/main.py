"""Command line: thin parsing and dispatch; every heavy import happens inside a subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import TunesmithError


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune an LLM on your own instruction or role-play data, then chat with it.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from .chat import add_chat_parser
    from .classify import add_classify_parser
    from .data import add_data_parser
    from .doctor import add_doctor_parser
    from .eval import add_eval_parser
    from .export import add_export_parser
    from .serve import add_serve_parsers
    from .train import add_train_parser
    from .tune import add_tune_parser

    add_train_parser(sub)
    add_chat_parser(sub)
    add_data_parser(sub)
    add_eval_parser(sub)
    add_serve_parsers(sub)
    add_export_parser(sub)
    add_tune_parser(sub)
    add_classify_parser(sub)
    add_doctor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tunesmith`` command. Returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..logs import setup_cli_logging

    setup_cli_logging(args.verbose)
    try:
        if hasattr(args, "threads"):  # every command that computes (train takes `train.threads`)
            from ..runtime.hardware import use_threads

            use_threads(args.threads)
        return args.func(args)
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written: say which and why, no traceback
        from ..files import os_error_message

        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
