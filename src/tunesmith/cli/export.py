"""`tunesmith export`: a thin wrapper over tunesmith.export.run_export."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import add_threads_arg

FORMATS = ("hf", "gguf", "onnx")  # tunesmith.export.FORMATS, repeated so --help imports nothing heavy


def _split(values: list[str] | None) -> list[str]:
    """``--format gguf --format onnx`` and ``--format gguf,onnx`` both work."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _summary(report: dict[str, Any]) -> str:
    lines = [f"exported {report['source_run']} → {report['output']} ({', '.join(report['formats'])})"]
    lines.append("checks against the fine-tuned model (fixed prompts; logits and greedy answers):")
    for c in report["checks"]:
        lines.append(
            f"  {c['name']:<11} {'ok' if c['passed'] else 'FAILED'}  max |Δlogit| {c['max_abs_diff']:.2e}"
            f"  top-1 agreement {c['top1_agreement']:.3f}"
            f"  greedy {c['greedy_equal']}/{c['greedy_total']} equal"
        )
    q = report.get("quantization")
    if q:
        lines.append(f"int8 ({q['method']}; {len(q['float_layers'])} layers with outliers kept float):")
        lines.append(
            f"  size {q['size_bytes']['float'] / 1e6:.1f} MB → {q['size_bytes']['int8'] / 1e6:.1f} MB"
            f" ({q['size_ratio']:.2f}x); greedy speed {q['tokens_per_s']['float']:.1f} → "
            f"{q['tokens_per_s']['int8']:.1f} tokens/s ({q['speedup']:.2f}x, same process)"
        )
        lines.append(
            f"  perplexity {q['perplexity']['float']:.3f} → {q['perplexity']['int8']:.3f}"
            f" ({q['perplexity_change_pct']:+.2f}%) on {q['eval_data']}"
        )
    lines.append(f"chat with it: tunesmith chat {report['output']}   (see docs/deploy.md for runtimes)")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, run_export

    formats = _split(args.format) or ["hf"]
    opts = ExportOptions(
        formats=tuple(dict.fromkeys(["hf", *formats])),
        gguf_types=tuple(_split(args.gguf_type)) or ("f16", "q8_0"),
        quantize=args.quantize,
        dtype=args.dtype,
        tolerance=args.tolerance,
        eval_data=args.eval_data,
        eval_records=args.eval_records,
        triton_name=args.triton_name,
        int8_outlier_ratio=args.int8_outlier_ratio,
    )
    report = run_export(args.run_dir, args.output, opts)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else _summary(report))
    return 0


def add_export_parser(sub: Any) -> None:
    """Register `tunesmith export` on the top-level subparsers."""
    p = sub.add_parser(
        "export",
        help="merge the adapter and export (Hugging Face, GGUF, ONNX/Triton; int8)",
        description=(
            "Merge a run's adapter into its base model and write a model directory that chat and "
            "serve accept like a run dir (run card included), plus the formats asked for. Every "
            "format is loaded back and compared with the fine-tuned model on fixed prompts (logits "
            "and greedy answers); on a mismatch nothing is written. Example: "
            "tunesmith export runs/quickstart -o exports/quickstart --merge --format gguf"
        ),
    )
    p.add_argument("run_dir", help="a run directory written by `tunesmith train`")
    p.add_argument("-o", "--output", required=True, help="output directory (must not exist or be empty)")
    add_threads_arg(p)
    p.add_argument(
        "--merge",
        action="store_true",
        help="write the merged Hugging Face model (safetensors); always done, the other formats build on it",
    )
    p.add_argument(
        "--format",
        action="append",
        metavar="{hf,gguf,onnx}",
        help="extra format(s), repeatable or comma-separated: gguf (llama.cpp/Ollama), onnx (ONNX "
        "Runtime, with a Triton model repository)",
    )
    p.add_argument(
        "--gguf-type",
        action="append",
        metavar="{f32,f16,q8_0}",
        help="GGUF tensor type(s), repeatable or comma-separated (default: f16,q8_0)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 dynamic quantization for CPU: of the ONNX model with --format onnx, else of the "
        "PyTorch model at load time; size, speed and perplexity change are measured and reported",
    )
    p.add_argument(
        "--int8-outlier-ratio",
        type=float,
        default=100.0,
        help="with --quantize: Linear layers whose input peak/mean |activation| exceeds this on the check "
        "prompts stay float (default 100; inf quantizes every layer)",
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="merged weights dtype"
    )
    p.add_argument("--tolerance", type=float, help="relative logit tolerance of the float checks")
    p.add_argument("--eval-data", help="records for the int8 perplexity (default: the run's data file)")
    p.add_argument("--eval-records", type=int, default=32, help="how many records (default 32)")
    p.add_argument("--triton-name", help="Triton model name (default: the output directory's name)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=cmd_export)
