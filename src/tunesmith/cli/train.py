"""`tunesmith train CONFIG [section.key=value ...]`: fine-tune and write a run directory."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..training import run_train

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


def add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model; writes a run directory",
        description="Fine-tune with LoRA. Example: tunesmith train examples/quickstart.yaml lora.r=16",
    )
    p.add_argument("config", help="YAML config file (see examples/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    p.set_defaults(func=cmd_train)
