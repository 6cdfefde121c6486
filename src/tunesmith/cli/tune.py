"""`tunesmith tune CONFIG [section.key=value ...] --trials N`: hyperparameter search with Optuna."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_tune(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..training.tune import results_table, run_tune

    cfg = load_config(args.config, args.overrides)
    try:
        result = run_tune(cfg, trials=args.trials)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the trials so far are in {cfg.train.output_dir}/results.md",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps({"best": result.best, "trials": result.rows}, ensure_ascii=False, indent=2))
        return 0
    print(results_table(result.rows, list(cfg.tune.space)), end="")
    if result.best is None:
        print("no trial finished; nothing to recommend", file=sys.stderr)
        return 1
    print(
        f"best: trial {result.best['trial']} (validation loss {result.best['eval_loss']:.4f}), "
        f"run dir {result.best['run_dir']}\n"
        f"best config: {result.best_config}  (train it: tunesmith train {result.best_config})"
    )
    return 0


def add_tune_parser(sub: Any) -> None:
    """Register `tunesmith tune` on the top-level subparsers."""
    p = sub.add_parser(
        "tune",
        help="search hyperparameters (Optuna); writes a results table and the best config",
        description=(
            "Hyperparameter search: each trial trains a run with values drawn from the config's "
            "`tune.space`, minimising validation loss; bad trials are pruned early. "
            "Example: tunesmith tune examples/tune.yaml --trials 10"
        ),
    )
    p.add_argument("config", help="YAML config file with a `tune` section (see docs/training.md)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override config values")
    p.add_argument("--trials", type=int, help="number of trials (default: tune.trials)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_tune)
