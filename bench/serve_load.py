"""Serving throughput and latency: the transformers backend at 1 and at 8 concurrent clients.

What it does, end to end and offline:

1. trains a small run directory on the packaged SmolLM2-135M-Instruct (``smollm2-135m-instruct``)
   with ``tunesmith.training.run_train`` for a few LoRA steps on examples/data/zhenhuan_roleplay.json
   (the adapter's quality is irrelevant here; a real run dir is what the server loads);
2. starts ``tunesmith serve``'s app (transformers backend) in this process on 127.0.0.1;
3. drives it with the official ``openai`` client from C concurrent clients, each a bounded
   loop of R chat requests (distinct role-play questions; greedy; ``max_tokens`` answer tokens
   with ``ignore_eos`` so every answer has the same length and tokens/s compares like with like);
4. reports, per concurrency: requests, generated tokens, wall time, generated tokens/s, p50/p95
   latency, and the batch sizes the server formed; and the 8-vs-1 tokens/s ratio, measured in
   the same run;
5. does all of it for float32 weights (what `tunesmith serve` uses on CPUs by default) and for
   ``--dtype auto`` (bfloat16 where the CPU computes it natively).

The targets: at 8 clients a mean batch of at least 7 rows and at least 4x one client's tokens/s.
It records the load average at the start and at the end; when the machine was busy at the start
(1-minute load average above 0.5) it says so loudly and exits with status 3.

Only one benchmark should run at a time on a shared machine:

    flock /tmp/tunesmith-bench.lock .venv/bin/python bench/serve_load.py
    # train once into --run-dir, reuse it on later runs:
    flock /tmp/tunesmith-bench.lock .venv/bin/python bench/serve_load.py --run-dir /tmp/serve-bench-run

Writes bench/results/serve_load.json (``--out`` changes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 4.0  # 8 clients' tokens/s against one client's, on an idle machine
TARGET_BATCH = 7.0  # mean rows per batch at 8 clients
BUSY_LOAD = 0.5  # 1-minute load average at the start above which the figures are not trusted


DATA = REPO / "examples" / "data" / "zhenhuan_roleplay.json"
MODEL = "smollm2-135m-instruct"


def train_run(out: Path, steps: int) -> Path:
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    if (out / "tunesmith.json").is_file():
        return out
    cfg = load_config(
        None,
        [
            f"model.source={MODEL}",
            f"data.path={DATA}",
            "data.limit=64",
            "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛",
            f"train.output_dir={out}",
            f"train.max_steps={steps}",
            "train.batch_size=2",
            "train.grad_accum=1",
            "train.learning_rate=2e-4",
            "data.val_fraction=0",
        ],
    )
    return Path(run_train(cfg))


def questions(n: int) -> list[str]:
    records = json.loads(DATA.read_text(encoding="utf-8"))
    return [r["instruction"] for r in records[:n]]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load(url: str, clients: int, rounds: int, max_tokens: int, qs: list[str], backend, metrics) -> dict:
    """``clients`` threads, each asking ``rounds`` questions one after another (a bounded loop)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    batches_before = metrics.get_sample_value("tunesmith_batch_size_count") or 0
    rows_before = metrics.get_sample_value("tunesmith_batch_size_sum") or 0

    def client_loop(c: int) -> None:
        for r in range(rounds):
            q = qs[(c * rounds + r) % len(qs)]
            t0 = time.perf_counter()
            resp = client.chat.completions.create(
                model="zhenhuan",
                messages=[{"role": "user", "content": q}],
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                tokens.append(resp.usage.completion_tokens)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with backend.lock:  # the last batch may still be leaving generate(); let it finish counting
        pass
    batches = (metrics.get_sample_value("tunesmith_batch_size_count") or 0) - batches_before
    rows = (metrics.get_sample_value("tunesmith_batch_size_sum") or 0) - rows_before
    return {
        "clients": clients,
        "requests": len(latencies),
        "generated_tokens": sum(tokens),
        "wall_s": round(wall, 2),
        "generated_tokens_per_s": round(sum(tokens) / wall, 2),
        "latency_p50_s": round(percentile(latencies, 0.5), 2),
        "latency_p95_s": round(percentile(latencies, 0.95), 2),
        "batches": int(batches),
        "mean_batch_size": round(rows / batches, 2) if batches else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="train here once, reuse afterwards (default: a temp dir)")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds-1", type=int, default=6, help="requests of the single client")
    ap.add_argument("--rounds-8", type=int, default=3, help="requests of each of the 8 clients")
    ap.add_argument("--dtypes", nargs="+", default=[None, "auto"], help="dtype options to measure")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_load.json")
    ap.add_argument("--allow-busy", action="store_true", help="exit 0 even if the machine was busy")
    args = ap.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from tunesmith.runtime import hardware
    from tunesmith.serving.app import create_app
    from tunesmith.serving.server import ServerThread, build_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
    t0 = time.perf_counter()
    target = args.run_dir or Path(tmp.name) / "run"
    reused = (target / "tunesmith.json").is_file()
    run = train_run(target, args.train_steps)
    train_s = None if reused else round(time.perf_counter() - t0, 1)
    qs = questions(32)
    configs = []
    for dtype in args.dtypes:
        backend = build_backend({"zhenhuan": run}, device="cpu", dtype=dtype)
        app = create_app(backend)
        metrics = app.state.metrics.registry
        with ServerThread(app) as srv:
            load(srv.url, 2, 1, 8, qs, backend, metrics)  # warm-up: first calls pay one-off costs
            one = load(srv.url, 1, args.rounds_1, args.max_tokens, qs, backend, metrics)
            eight = load(srv.url, 8, args.rounds_8, args.max_tokens, qs, backend, metrics)
        ratio = eight["generated_tokens_per_s"] / one["generated_tokens_per_s"]
        print(f"dtype {dtype}: 1 client {one}\n8 clients {eight}", file=sys.stderr, flush=True)
        weights = str(next(backend.model.parameters()).dtype).removeprefix("torch.")
        configs.append(
            {
                "dtype_option": dtype or "default",
                "weights": weights,
                "results": [one, eight],
                "tokens_per_s_ratio_8_vs_1": round(ratio, 2),
                "meets_target": ratio >= TARGET_RATIO and eight["mean_batch_size"] >= TARGET_BATCH,
            }
        )
        del backend, app
    result = {
        "benchmark": "serve_load",
        "model": MODEL,
        "backend": "transformers",
        "max_tokens": args.max_tokens,
        "decoding": "greedy, ignore_eos (every answer max_tokens long)",
        "train_steps": args.train_steps,
        "run_dir": "reused (--run-dir, trained by this script earlier)" if reused else "trained in this run",
        "train_s": train_s,
        "target_ratio_8_vs_1": TARGET_RATIO,
        "target_mean_batch_8": TARGET_BATCH,
        "configs": configs,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu": hardware.cpu_model(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "busy": load_at_start[0] > BUSY_LOAD,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    tmp.cleanup()
    if result["machine"]["busy"]:
        print(
            f"\nTHE MACHINE WAS BUSY: load average {load_at_start[0]} at the start (> {BUSY_LOAD}). Other "
            "processes took CPU from the server and the clients; these figures do not show the batcher. "
            "Run it again on an idle machine (--allow-busy to keep them anyway).",
            file=sys.stderr,
        )
        if not args.allow_busy:
            sys.exit(3)


if __name__ == "__main__":
    main()
