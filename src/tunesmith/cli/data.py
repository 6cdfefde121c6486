"""`tunesmith data …` subcommands: thin wrappers over tunesmith.data, each with --json."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _emit(args: argparse.Namespace, report: Any, text: str) -> None:
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(text)


def _token_counter(model: str, system_prompt: str | None):  # noqa: ANN202
    from ..modeling import load_tokenizer, resolve_source
    from ..templates import ChatFormat

    fmt = ChatFormat(load_tokenizer(resolve_source(model).path))

    def count(conv: list[dict[str, str]]) -> int:
        if system_prompt and conv[0]["role"] != "system":
            conv = [{"role": "system", "content": system_prompt}, *conv]
        return len(fmt.encode(conv, 10**9).input_ids)

    return count


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_file
    from ..data.report import inspect_html, inspect_text
    from ..files import atomic_write_text

    counter = _token_counter(args.model, args.system_prompt) if args.model else None
    rep = inspect_file(args.file, args.format, args.near_threshold, counter, args.max_length)
    if args.model:
        rep["lengths_tokens"]["model"] = args.model
    if args.html:
        atomic_write_text(args.html, inspect_html(rep))
    _emit(args, {k: v for k, v in rep.items() if k != "histograms"}, inspect_text(rep))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from ..data.clean import clean_file, load_recipe

    rep = clean_file(args.file, args.output, load_recipe(args.recipe), args.removed, args.report)
    text = (
        f"{rep['input_records']} records in, {rep['output_records']} out → {rep['output']}\n"
        f"removed by reason: {rep['removed']} → {rep['removed_file']}\n"
        f"changed by normalisation: {rep['modified']}"
    )
    _emit(args, rep, text)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from ..data.split import split_file

    rep = split_file(args.file, args.output, args.val, args.seed, args.stratify, args.near_threshold)
    text = (
        f"{rep['records']} records → train {rep['train']}, val {rep['val']} in {args.output} "
        f"({rep['grouped_records']} records kept together in prompt/near-duplicate groups)"
    )
    _emit(args, rep, text)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..data.convert import convert_file, import_label_studio, write_records

    if args.source_format == "label-studio":
        records, rep = import_label_studio(args.file, args.mode)
        out_fmt = "alpaca" if rep.get("kind", rep.get("mode")) != "classification" else None
        if out_fmt is None:
            from ..data.convert import write_raw

            write_raw(records, args.output)
        else:
            write_records(records, args.output, args.to)
        rep = {**rep, "written": len(records), "output": args.output}
        _emit(
            args, rep, f"{len(records)} records from Label Studio → {args.output}; skipped {rep['skipped']}"
        )
        return 0
    n = convert_file(args.file, args.output, args.to, args.source_format, args.system_prompt)
    _emit(args, {"written": n, "output": args.output, "format": args.to}, f"{n} records → {args.output}")
    return 0


def cmd_agree(args: argparse.Namespace) -> int:
    from ..data.agreement import agreement_from_csv, agreement_from_label_studio

    if args.file.lower().endswith(".csv"):
        cols = args.annotators.split(",") if args.annotators else None
        rep = agreement_from_csv(args.file, args.item_column, cols)
    else:
        rep = agreement_from_label_studio(args.file)
    _emit(args, rep.as_dict(), rep.to_text())
    return 0


def add_data_parser(sub: Any) -> None:
    """Register `tunesmith data` and its subcommands on the top-level subparsers."""
    data = sub.add_parser(
        "data",
        help="inspect, clean, split, convert data; annotator agreement",
        description="Data preparation. Each subcommand takes --json for scripts.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    def add(name: str, helptext: str, func: Any) -> argparse.ArgumentParser:
        p = dsub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("file", help="data file (.json, .jsonl or .csv)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.set_defaults(func=func)
        return p

    p = add("inspect", "report counts, fields, duplicates, lengths and text problems", cmd_inspect)
    p.add_argument("--format", default="auto", help="record format (default: detect per record)")
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard threshold of near-duplicates")
    p.add_argument("--model", help="also count tokens with this model's tokenizer and chat template")
    p.add_argument("--max-length", type=int, default=384, help="token limit to count truncations against")
    p.add_argument("--system-prompt", help="system prompt to include in token counts")
    p.add_argument("--html", help="also write an HTML report with histograms here")

    p = add("clean", "normalise, drop bad and duplicate records; removed ones go to a side file", cmd_clean)
    p.add_argument("-o", "--output", required=True, help="cleaned file (.json, .jsonl or .csv)")
    p.add_argument("--recipe", help="cleaning recipe YAML (default: the built-in recipe)")
    p.add_argument("--removed", help="removed records file (default: OUTPUT.removed.jsonl)")
    p.add_argument("--report", help="report file (default: OUTPUT.report.json)")

    p = add("split", "split into train/val; prompt and near-duplicate groups never straddle", cmd_split)
    p.add_argument("-o", "--output", required=True, help="output directory for train.* and val.*")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--stratify", help="field whose values are split in equal proportion")
    p.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard threshold of near-duplicates")

    p = add("convert", "convert between alpaca, sharegpt, messages, CSV; import Label Studio", cmd_convert)
    p.add_argument("-o", "--output", required=True, help="output file (.json, .jsonl or .csv)")
    p.add_argument("--to", default="alpaca", choices=["alpaca", "sharegpt", "messages", "csv"])
    p.add_argument(
        "--from",
        dest="source_format",
        default="auto",
        choices=["auto", "alpaca", "sharegpt", "messages", "label-studio"],
    )
    p.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "pairs", "classification"],
        help="Label Studio: instruction/answer pairs or text+label",
    )
    p.add_argument("--system-prompt", help="add this system prompt where a record has none")

    p = add("agree", "inter-annotator agreement (Cohen's / Fleiss' kappa)", cmd_agree)
    p.add_argument("--item-column", help="CSV: the column naming each item")
    p.add_argument("--annotators", help="CSV: comma-separated annotator columns (default: all others)")
