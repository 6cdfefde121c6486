"""Evaluation generation: left-padded batches vs one prompt at a time, packaged SmolLM2, greedy.

Trains a throwaway run (5 LoRA steps on the example data) unless --run-dir is given, then answers
the same prompts twice in this process — one at a time and in batches, both through
``tunesmith.evaluation.generate_all`` (``Chatbot.generate_batch``) with the run card's settings
made greedy — checks that every answer is identical, and writes the speed ratio. The two ways
take turns batch by batch (the batches ``generate_all`` itself would form), so load from other
processes falls on both alike. Usage (one benchmark at a time on a shared machine):

    flock /tmp/tunesmith-bench.lock .venv/bin/python bench/eval_batching.py [--prompts 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from tunesmith.config import load_config
from tunesmith.evaluation import generate_all, load_eval_items
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "zhenhuan_roleplay.json"


def train_run(tmp: Path) -> Path:
    cfg = load_config(
        REPO / "examples" / "quickstart.yaml",
        [
            "model.source=smollm2-135m-instruct",  # the model its committed results were measured on
            f"train.output_dir={tmp / 'run'}",
            "train.max_steps=5",
            "data.val_fraction=0",
            "train.save_steps=5",
        ],
    )
    return run_train(cfg)


def interleaved(bot, prompts, sampling, batch_size: int) -> tuple[list, float, list, float]:  # noqa: ANN001
    """Answers and seconds of one-at-a-time and of batched generation, taking turns per batch."""
    # generate_all batches prompts in order of length; chunk the same way so the batches match.
    prompts = sorted(prompts, key=lambda p: len(bot.fmt.encode_prompt(bot.with_system(p))))
    single, batched, single_s, batched_s = [], [], 0.0, 0.0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        t0 = time.perf_counter()
        single += generate_all(bot, chunk, sampling, batch_size=1, progress=False)
        t1 = time.perf_counter()
        batched += generate_all(bot, chunk, sampling, batch_size=batch_size, progress=False)
        single_s, batched_s = single_s + t1 - t0, batched_s + time.perf_counter() - t1
    return single, single_s, batched, batched_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", help="an existing SmolLM2 run (default: train one for 5 steps)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="the evaluation default")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_batching.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else train_run(Path(tmp))
        bot = load_chatbot(run_dir, device="cpu")
        # Distinct prompts, in file order: the bench measures generation, not duplicate prompts.
        seen: dict[str, list] = {}
        for it in load_eval_items(DATA):
            seen.setdefault(it.prompt[-1]["content"], it.prompt)
        prompts = list(seen.values())[: args.prompts]
        greedy = bot.defaults.updated(temperature=0.0)
        generate_all(bot, prompts[:2], greedy, batch_size=2, progress=False)  # warm-up
        single, single_s, batched, batched_s = interleaved(bot, prompts, greedy, args.batch_size)
    same = [
        a.text == b.text and a.completion_tokens == b.completion_tokens
        for a, b in zip(single, batched, strict=True)
    ]
    tokens = sum(g.completion_tokens for g in single)
    result = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "torch_threads": torch.get_num_threads(),
        "model": "smollm2-135m-instruct",
        "run": "5 LoRA steps on examples/data/zhenhuan_roleplay.json (examples/quickstart.yaml)",
        "prompts": len(prompts),
        "sampling": greedy.as_dict(),
        "batch_size": args.batch_size,
        "method": "one-at-a-time and batched take turns per batch of the same prompts, in one process",
        "completion_tokens": tokens,
        "answers_stopped_by_end_of_turn": sum(g.stopped for g in single),
        "one_at_a_time_s": round(single_s, 2),
        "batched_s": round(batched_s, 2),
        "one_at_a_time_tokens_per_s": round(tokens / single_s, 1),
        "batched_tokens_per_s": round(tokens / batched_s, 1),
        "speedup": round(single_s / batched_s, 2),
        "identical_answers": sum(same),
        "mismatched_prompts": [i for i, ok in enumerate(same) if not ok],
    }
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False, indent=2))
    assert all(same), f"{len(same) - sum(same)} of {len(same)} batched answers differ from one-at-a-time"


if __name__ == "__main__":
    main()
