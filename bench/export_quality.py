"""Export quality on the packaged SmolLM2-135M-Instruct: merged, GGUF f16/q8_0, ONNX, int8.

Trains a short LoRA run (or takes ``--run``), exports it with every format and ONNX Runtime int8,
then measures PyTorch dynamic int8 on the same merged model. Each float/int8 pair is timed in
this one process, interleaved, so the speed ratio holds on a busy machine; absolute tokens/s do
not. Run it alone, under the shared lock:

    flock /tmp/tunesmith-bench.lock .venv/bin/python bench/export_quality.py \
        [--run RUN_DIR] [--steps 30] [--out bench/results/export_quality.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from tunesmith.config import load_config
from tunesmith.export import CHECK_PROMPTS, ExportOptions, run_export
from tunesmith.export.checks import TorchRunner
from tunesmith.export.measure import compare_int8, eval_examples, torch_size
from tunesmith.logs import setup_cli_logging
from tunesmith.modeling import quantize_int8
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "zhenhuan_roleplay.json"


def train_run(tmp: Path, steps: int) -> Path:
    cfg = load_config(
        REPO / "examples" / "quickstart.yaml",
        [
            "model.source=smollm2-135m-instruct",  # the export paths cover llama/qwen2 shapes
            f"train.output_dir={tmp / 'run'}",
            f"train.max_steps={steps}",
            f"train.save_steps={steps}",
            "data.val_fraction=0",
            "train.logging_steps=10",
        ],
    )
    return run_train(cfg)


def torch_int8(export_dir: Path, eval_records: int, new_tokens: int) -> dict:
    """PyTorch dynamic int8 of the exported merged model against the same model in float32."""
    bot = load_chatbot(export_dir, device="cpu")
    keep = bot.card.export["int8_float_layers"]  # found by the export on the check prompts
    q = quantize_int8(copy.deepcopy(bot.model), keep)
    examples, origin = eval_examples(bot, str(DATA), eval_records, [])
    prompt = bot.fmt.encode_prompt(bot.with_system(CHECK_PROMPTS[0]))
    sizes = (torch_size(bot.model), torch_size(q))
    result = compare_int8(
        "torch dynamic int8 (Linear layers)",
        TorchRunner(bot.model),
        TorchRunner(q),
        sizes,
        examples,
        prompt,
        new_tokens,
    )
    return {**result, "eval_data": origin, "float_layers": keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing SmolLM2 run dir (default: train one for --steps)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-records", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens timed per speed round")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "export_quality.json"))
    args = ap.parse_args()
    setup_cli_logging()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_dir = Path(args.run) if args.run else train_run(Path(tmp), args.steps)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        opts = ExportOptions(
            formats=("hf", "gguf", "onnx"),
            gguf_types=("f16", "q8_0"),
            quantize="int8",
            eval_data=str(DATA),
            eval_records=args.eval_records,
        )
        report = run_export(run_dir, Path(tmp) / "export", opts)
        export_s = time.perf_counter() - t0
        files = json.loads((Path(tmp) / "export" / "tunesmith.json").read_text(encoding="utf-8"))["export"][
            "files"
        ]
        torch_q = torch_int8(Path(tmp) / "export", args.eval_records, args.new_tokens)
    result = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "smollm2-135m-instruct (LoRA r=8 on examples/quickstart.yaml)",
        "train_steps": None if args.run else args.steps,
        "train_s": round(train_s, 1),
        "export_s": round(export_s, 1),
        "checks": report["checks"],
        "int8": {"onnxruntime": report["quantization"], "torch": torch_q},
        "file_bytes": {k: v for k, v in files.items() if k.endswith((".safetensors", ".gguf", ".onnx"))},
        "note": "speed ratios are within one process, interleaved; absolute tokens/s depend on load",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
