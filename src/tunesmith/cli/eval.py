"""`tunesmith eval`: a thin wrapper over tunesmith.evaluation.run_eval."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError
from .args import add_device_arg, add_sampling_args, sampling_overrides


def _at_least(low: int):  # noqa: ANN202
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


_positive = _at_least(1)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation import EvalOptions, parse_sweep, run_eval

    sweep = parse_sweep(args.sweep) if args.sweep is not None else None  # bad specs fail before loading
    opts = EvalOptions(
        out_dir=args.out,
        limit=args.limit,
        general=args.general,
        sweep=sweep,
        samples=args.samples,
        batch_size=args.batch_size,
        sampling=sampling_overrides(args),
        base_run=args.base_run,
        allow_different_base=args.allow_different_base,
        device=args.device,
        progress=not args.no_progress,
        persona=args.persona,
        persona_lines=args.persona_lines,
        generic=args.generic,
    )
    if args.data is None and args.persona is None:
        raise ConfigError("give --data FILE, --persona QUESTIONS, or both", "tunesmith eval")
    result = run_eval(args.run_dir, args.data, opts)
    if args.json:
        print(json.dumps(result.metrics, ensure_ascii=False, indent=2))
    else:
        print(summary(result.metrics, args.samples))
        print(f"report: {result.out_dir / 'report.html'} (and report.md, metrics.json)")
    return 0


def summary(metrics: dict[str, Any], examples: int = 0) -> str:
    """A few lines of base vs fine-tuned numbers for the terminal."""
    from ..evaluation.report import ROWS

    models = metrics["models"]
    lines = [f"{'metric':<52} {'base':>10} {'fine-tuned':>10}"]
    for key, label, _ in ROWS:
        if key in models["base"] or key in models["fine_tuned"]:
            cells = [models[s].get(key) for s in ("base", "fine_tuned")]
            lines.append(
                f"{label:<52} " + " ".join(f"{v:>10.3f}" if v is not None else f"{'–':>10}" for v in cells)
            )
    lines += [f"skipped {k}: {why}" for k, why in metrics.get("skipped", {}).items()]
    if metrics.get("persona"):
        lines += ["", persona_summary(metrics["persona"], examples)]
    return "\n".join(lines)


def persona_summary(persona: dict[str, Any], examples: int = 0) -> str:
    """The persona rates, base vs fine-tuned, with the judge's calibration and a few answers."""
    from ..evaluation.report import PERSONA_ROWS

    models = persona["models"]
    lines = [f"{'persona measure (held-out questions)':<66} {'base':>7} {'tuned':>7}"]
    for key, label, _ in PERSONA_ROWS:
        cells = [models[s].get(key) for s in ("base", "fine_tuned")]
        if any(c is not None for c in cells):
            lines.append(
                f"{label:<66} " + " ".join(f"{c:>7.2f}" if c is not None else f"{'–':>7}" for c in cells)
            )
    cal = persona["calibration"]["in_character"]
    lines.append(
        f"in-character judge calibration: {cal['persona_heldout']:.2f} of held-out persona lines, "
        f"{cal['generic_heldout']:.2f} of held-out lines in other voices judged in character"
    )
    for e in persona["examples"][:examples]:
        mark = "good" if e["fine_tuned_verdict"]["good"] else "not good"
        lines += [
            f"\nQ: {e['question']}",
            f"  base:  {_one_line(e['base'])}",
            f"  tuned: {_one_line(e['fine_tuned'])}  [{mark}]",
        ]
    return "\n".join(lines)


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def add_eval_parser(sub: Any) -> None:
    """Register `tunesmith eval` on the top-level subparsers."""
    p = sub.add_parser(
        "eval",
        help="evaluate a run against its base model; writes a Markdown/HTML report",
        description=(
            "Perplexity on answer tokens, BLEU-4/ROUGE against the reference answers, distinct-n, "
            "looping and stop rate, base vs fine-tuned, with loss curves and sample answers. "
            "Example: tunesmith eval runs/quickstart --data val.json --limit 100 --sweep; "
            "tunesmith eval runs/quickstart --persona examples/data/zhenhuan_questions.jsonl"
        ),
    )
    p.add_argument("run_dir", help="a run directory written by `tunesmith train`")
    p.add_argument("--data", help="evaluation data (.json/.jsonl/.csv); answers optional")
    p.add_argument(
        "--persona",
        metavar="QUESTIONS",
        help="held-out questions (.jsonl: question, kind, topic, reference) for the persona measures: "
        "in character, on topic, stopped, looping, assistant leak; alone, they are the data too",
    )
    p.add_argument(
        "--persona-lines",
        help="the persona's own answers for the in-character judge (default: the run's data)",
    )
    p.add_argument("--generic", help="generic assistant text for the judge (default: tunesmith's own set)")
    p.add_argument("--limit", type=_positive, help="evaluate only the first N records")
    p.add_argument("--general", help="general-purpose data: perplexity before/after shows forgetting")
    p.add_argument(
        "--sweep",
        nargs="*",
        metavar="KEY=V1,V2",
        help="also try decoding settings on the fine-tuned model: every combination of the values "
        "given (keys: temperature, top_p, top_k, repetition_penalty, max_new_tokens); "
        "alone: temperature=0,0.7 × repetition_penalty=1.0,1.1,1.3",
    )
    p.add_argument("--out", help="report directory (default: RUN_DIR/eval)")
    p.add_argument("--samples", type=_at_least(0), default=5, help="sample answers in the report (default 5)")
    p.add_argument(
        "--batch-size", type=_positive, default=32, help="prompts per generation batch (default 32)"
    )
    p.add_argument("--base-run", help="compare with this run directory instead of the base model")
    p.add_argument(
        "--allow-different-base",
        action="store_true",
        help="evaluate even if the base model's weights differ from those trained on",
    )
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the summary")
    add_sampling_args(
        p, "decoding (defaults come from the run card)", "sampling seed (default 0, so reruns agree)"
    )
    p.set_defaults(func=cmd_eval)
