"""Command-line flags that several subcommands share."""

from __future__ import annotations

import argparse
from typing import Any

SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """--device auto|cpu|cuda (auto: CUDA where available) and --threads."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_threads_arg(p)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads N (default: the physical cores no other process is using; see `tunesmith doctor`)."""
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: the physical cores this process may use that no other process is busy "
        "on)",
    )


def add_sampling_args(p: argparse.ArgumentParser, title: str, seed_help: str) -> None:
    """--temperature, --top-p, --top-k, --repetition-penalty, --max-new-tokens and --seed."""
    g = p.add_argument_group(title)
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--seed", type=int, help=seed_help)


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags given on the command line (the others stay as the run card has them)."""
    return {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
