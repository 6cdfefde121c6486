"""Training throughput of the packaged SmolLM2 with LoRA: fp32 baseline vs bf16 autocast.

Both runs happen in this process, one after the other, on the same records and settings, so
the ratio is meaningful even on a noisy machine. Usage:

    .venv/bin/python bench/train_throughput.py [--steps 30] [--out bench/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from tunesmith.config import load_config
from tunesmith.train import run_train

REPO = Path(__file__).resolve().parents[1]


def one_run(dtype: str, steps: int, tmp: Path) -> dict:
    cfg = load_config(
        REPO / "examples" / "quickstart.yaml",
        [
            f"train.output_dir={tmp / dtype}",
            f"train.max_steps={steps}",
            f"train.dtype={dtype}",
            "data.val_fraction=0",
            f"train.save_steps={steps}",
            "train.logging_steps=10",
        ],
    )
    t0 = time.perf_counter()
    run_dir = run_train(cfg)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    return {
        "dtype": dtype,
        "steps": steps,
        "train_tokens_per_s": card["metrics"]["train_tokens_per_s"],
        "train_loss": card["metrics"]["train_loss"],
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(d, args.steps, Path(tmp)) for d in ("float32", "bfloat16")]
    result = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "model": "smollm2-135m-instruct",
        "data": "examples/data/zhenhuan_roleplay.json",
        "batch": "2 x accumulation 2",
        "runs": runs,
        "bf16_over_fp32_tokens_per_s": runs[1]["train_tokens_per_s"] / runs[0]["train_tokens_per_s"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
