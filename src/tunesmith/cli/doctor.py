"""`tunesmith doctor`: what this machine gives tunesmith (cores, threads, measured dtype speeds)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def machine_report(model: str | None) -> dict[str, Any]:
    """Everything `doctor` prints, as data."""
    import torch
    import transformers

    from .. import __version__
    from ..modeling import cache_dir
    from ..runtime.hardware import (
        BF16_MARGIN,
        busy_cores,
        choose_dtype,
        cpu_model,
        free_threads,
        model_shape,
        usable_cores,
        use_threads,
    )

    threads = use_threads(None)
    shape_from = model if model and (Path(model) / "config.json").is_file() else None
    choice = choose_dtype("auto", "cpu", shape_from)
    return {
        "versions": {
            "tunesmith": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "cpu": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": {"usable": usable_cores(), "busy_now": busy_cores(), "default_threads": free_threads()},
        "matmul": {
            "shape": "x".join(map(str, model_shape(shape_from))),
            "threads": threads,
            "gflops": choice.gflops,
            "bf16_from": BF16_MARGIN,
        },
        "cpu_dtype": choice.dtype,
        "cpu_dtype_reason": choice.reason,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cache": str(cache_dir()),
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    rep = machine_report(args.model)
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        print()
        return 0
    v, c, m = rep["versions"], rep["cores"], rep["matmul"]
    rates = m["gflops"] or {}
    print(f"tunesmith {v['tunesmith']}, torch {v['torch']}, transformers {v['transformers']}")
    print(f"CPU: {rep['cpu']} (flags: {' '.join(rep['cpu_flags']) or 'none of ' + ', '.join(FLAGS)})")
    print(
        f"cores: {c['usable']} usable (affinity and cgroup quota), {c['busy_now']} busy with other "
        f"processes now -> {c['default_threads']} thread(s) by default"
    )
    print(
        f"matrix products {m['shape']} on {m['threads']} thread(s): "
        f"float32 {rates.get('float32', 0):.0f} GFLOP/s, bfloat16 {rates.get('bfloat16', 0):.0f} GFLOP/s"
    )
    print(f"train.dtype auto -> {rep['cpu_dtype']} ({rep['cpu_dtype_reason']})")
    print(f"GPU: {rep['cuda'] or 'none'}")
    print(f"cache: {rep['cache']}")
    print(
        "each command: train takes train.threads and train.dtype; chat, eval, serve, webui, export and "
        "classify take --threads (same default) and run float32 weights on the CPU"
    )
    return 0


def add_doctor_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="what this machine gives tunesmith: cores, threads, measured fp32/bf16 speed",
        description="Print CPU, usable and busy cores, the default thread count, and the measured speed "
        "of float32 and bfloat16 matrix products that `train.dtype: auto` decides by.",
    )
    p.add_argument("--model", help="a local model directory: measure with its layer shapes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)
