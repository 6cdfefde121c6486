"""Training throughput: the tutorial recipe vs tunesmith, back to back, same model/data/settings.

(a) baseline — the tutorial recipe literally: HF Trainer, DataCollatorForSeq2Seq(padding=True),
    gradient checkpointing on (with enable_input_require_grads), fp32, no warmup, linear decay;
(b) tunesmith's own `run_train` with its defaults (bf16 autocast where native, sequences packed
    without padding, packed rows and label rows filled to a multiple of 64 so that shapes repeat,
    label-only fused cross-entropy, frozen weights stored in bf16, LoRA dropout masks from
    rand >= p, no checkpointing), the schedule set to the same no-warmup linear decay so the
    losses are comparable;
(c) the same as (b) with `train.gradient_checkpointing=true`: tunesmith's memory-saving setting;
(d) the same as (b) with `train.pad_to_multiple_of=0`: what filling rows to repeating shapes buys.

Both train the packaged SmolLM2-135M-Instruct with the same LoRA (r=8, alpha=32, dropout 0.1,
q/k/v/o/gate/up/down), lr 1e-4, batch 2 x accumulation 2 and the Trainer's default weight decay
(0.0, as in the tutorial), on the same first N records of
huanhuan.json (examples/data otherwise), tokenised identically with the model's chat template
and the system prompt 现在你要扮演皇帝身边的女人--甄嬛, in the same order (Trainer's seeded sampler).
Each runs in its own subprocess so its peak RSS is its own. A bf16 matmul ceiling is measured in
the same run for model FLOPs utilisation (MFU).

    .venv/bin/python bench/train_throughput.py --quick            # N=64, a few minutes
    .venv/bin/python bench/train_throughput.py --records 256      # the fuller run
    .venv/bin/python bench/train_throughput.py --quick --qwen2-shaped \
        --out bench/results/train_throughput_qwen2_shaped.json

`--model` takes any tunesmith model source. `--qwen2-shaped` trains a Qwen2 model of
Qwen2.5-0.5B-Instruct's shape (24 layers, hidden 896, 151,936-word vocabulary, tied head) with
random weights and SmolLM2's tokenizer, for the speed ratio on that architecture where its real
weights are not at hand; its losses compare the two recipes with each other, nothing more.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HUANHUAN = REPO.parent / "shared" / "data" / "huanhuan.json"
EXAMPLE = REPO / "examples" / "data" / "zhenhuan_roleplay.json"
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
MODEL = "smollm2-135m-instruct"
LORA = dict(r=8, alpha=32, dropout=0.1)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def data_file(n: int, tmp: Path) -> Path:
    src = HUANHUAN if HUANHUAN.is_file() else EXAMPLE
    rows = json.loads(src.read_text(encoding="utf-8"))[:n]
    path = tmp / "data.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def qwen2_shaped(where: Path) -> str:
    """A randomly initialised Qwen2ForCausalLM in Qwen2.5-0.5B-Instruct's shape, saved under
    ``where`` with the packaged SmolLM2 tokenizer (its ids fit the larger vocabulary)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tunesmith.modeling import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source(MODEL).path)
    cfg = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return str(where)


def run_baseline(data: Path, out: Path, model_source: str = MODEL) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.data import load_records
    from tunesmith.modeling import load_model, load_tokenizer, resolve_source
    from tunesmith.templates import ChatFormat

    src = resolve_source(model_source)
    tok = load_tokenizer(src.path)
    fmt = ChatFormat(tok)
    examples = [fmt.encode(c, 384) for c in load_records(data, system_prompt=SYSTEM)]
    ds = [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
        for e in examples
    ]
    model = load_model(src.path, "float32")
    model.enable_input_require_grads()  # the tutorial's step for gradient checkpointing with PEFT
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            target_modules=TARGETS,
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
        ),
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        logging_steps=1,
        num_train_epochs=1,
        save_strategy="no",
        learning_rate=1e-4,
        gradient_checkpointing=True,
        use_cpu=True,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=DataCollatorForSeq2Seq(tok, padding=True)
    )
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": trainer.state.num_input_tokens_seen, "seconds": elapsed, "losses": losses}


def run_tunesmith(data: Path, out: Path, *extra: str, model_source: str = MODEL) -> dict:
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    cfg = load_config(
        None,
        [
            f"model.source={model_source}",
            f"data.path={data}",
            f"data.system_prompt={SYSTEM}",
            "data.val_fraction=0",
            f"train.output_dir={out}",
            "train.epochs=1",
            "train.learning_rate=1e-4",
            "train.min_lr=0",
            "train.warmup_ratio=0",
            "train.weight_decay=0",
            "train.logging_steps=1",
            "train.save_steps=100000",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['alpha']}",
            f"lora.dropout={LORA['dropout']}",
            *extra,
        ],
    )
    run_dir = run_train(cfg)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r and "train_loss" not in r]
    tps = card["metrics"]["train_tokens_per_s"]
    tokens = max(r.get("num_input_tokens_seen", 0) for r in logs)
    return {"tokens": tokens, "seconds": tokens / tps, "losses": losses}


KINDS = ("baseline", "tunesmith", "tunesmith_checkpointed", "tunesmith_unfilled")


def worker(kind: str, data: Path, result: Path, model: str = MODEL) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        if kind == "baseline":
            res = run_baseline(data, out, model)
        elif kind == "tunesmith":
            res = run_tunesmith(data, out, model_source=model)
        elif kind == "tunesmith_checkpointed":  # the memory-saving setting: levers + checkpointing
            res = run_tunesmith(data, out, "train.gradient_checkpointing=true", model_source=model)
        else:  # rows not filled to a multiple of 64 tokens: every micro-batch has new shapes
            res = run_tunesmith(data, out, "train.pad_to_multiple_of=0", model_source=model)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.write_text(json.dumps(res), encoding="utf-8")


def matmul_ceiling() -> float:
    """bf16 GFLOP/s of a 2048² matmul on this machine, now."""
    import torch

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def flops_per_token(model: str = MODEL) -> tuple[float, float]:
    """LoRA training FLOPs per non-padding token (forward + input gradients = 4 x non-embedding
    parameters) and per label token through the tied LM head (4 x hidden x vocab)."""
    from transformers import AutoConfig

    from tunesmith.modeling import resolve_source

    cfg = AutoConfig.from_pretrained(resolve_source(model).path)
    h, i, n_layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return 4 * per_layer * n_layers, 4 * h * v


def final_loss(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 4) :]
    return sum(tail) / len(tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="64 records (a few minutes)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_throughput.json"))
    ap.add_argument("--model", default=MODEL, help="a tunesmith model source (default: %(default)s)")
    ap.add_argument("--qwen2-shaped", action="store_true", help="random weights in Qwen2.5-0.5B's shape")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), Path(args.result), args.model)
    n = 64 if args.quick else args.records
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_file(n, Path(tmp))
        model, label = args.model, args.model
        if args.qwen2_shaped:
            model = qwen2_shaped(Path(tmp) / "qwen2-shaped")
            label = "Qwen2ForCausalLM in Qwen2.5-0.5B's shape, random weights, SmolLM2 tokenizer"
        for kind in KINDS:
            res = Path(tmp) / f"{kind}.json"
            cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--result", str(res)]
            subprocess.run([*cmd, "--model", model], check=True)
            runs[kind] = json.loads(res.read_text(encoding="utf-8"))
        per_tok, per_label = flops_per_token(model)
    ceiling = matmul_ceiling()
    b, t, c, u = (runs[k] for k in KINDS)
    b_tps, t_tps, c_tps, u_tps = (r["tokens"] / r["seconds"] for r in (b, t, c, u))
    result = {
        "model": label,
        "records": n,
        "data": "huanhuan.json" if HUANHUAN.is_file() else "examples",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "non_padding_tokens": b["tokens"],
        "baseline_tokens_per_s": round(b_tps, 1),
        "tunesmith_tokens_per_s": round(t_tps, 1),
        "speedup": round(t_tps / b_tps, 2),
        "baseline_final_loss": round(final_loss(b["losses"]), 4),
        "tunesmith_final_loss": round(final_loss(t["losses"]), 4),
        "final_loss_rel_diff": round(abs(final_loss(t["losses"]) / final_loss(b["losses"]) - 1), 4),
        "baseline_peak_rss_mb": round(b["peak_rss_mb"]),
        "tunesmith_peak_rss_mb": round(t["peak_rss_mb"]),
        "checkpointed_tokens_per_s": round(c_tps, 1),
        "checkpointed_speedup": round(c_tps / b_tps, 2),
        "checkpointed_final_loss": round(final_loss(c["losses"]), 4),
        "checkpointed_peak_rss_mb": round(c["peak_rss_mb"]),
        "unfilled_tokens_per_s": round(u_tps, 1),
        "unfilled_speedup": round(u_tps / b_tps, 2),
        "unfilled_final_loss": round(final_loss(u["losses"]), 4),
        "unfilled_peak_rss_mb": round(u["peak_rss_mb"]),
        "bf16_matmul_gflops": round(ceiling, 1),
        "mfu": round(t_tps * per_tok / 1e9 / ceiling, 4),
        "baseline_mfu": round(b_tps * per_tok / 1e9 / ceiling, 4),
        "flops_note": "MFU counts 4 x non-embedding parameters per non-padding token (forward + input "
        f"gradients of frozen weights; LM head {per_label / 1e6:.0f} MFLOP per label token not counted)",
        "final_loss_definition": "mean training loss over the last 25% of optimizer steps",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = Path(args.out).with_suffix(".md")
    md.write_text(
        "| run | non-padding tokens/s | final loss | peak RSS MB | MFU |\n|---|---|---|---|---|\n"
        f"| tutorial recipe | {result['baseline_tokens_per_s']} | {result['baseline_final_loss']} | "
        f"{result['baseline_peak_rss_mb']} | {result['baseline_mfu']:.1%} |\n"
        f"| tunesmith | {result['tunesmith_tokens_per_s']} | {result['tunesmith_final_loss']} | "
        f"{result['tunesmith_peak_rss_mb']} | {result['mfu']:.1%} |\n"
        f"| tunesmith + gradient checkpointing | {result['checkpointed_tokens_per_s']} | "
        f"{result['checkpointed_final_loss']} | {result['checkpointed_peak_rss_mb']} | "
        f"{result['checkpointed_tokens_per_s'] * per_tok / 1e9 / ceiling:.1%} |\n"
        f"| tunesmith, rows not filled to a multiple of 64 | {result['unfilled_tokens_per_s']} | "
        f"{result['unfilled_final_loss']} | {result['unfilled_peak_rss_mb']} | "
        f"{result['unfilled_tokens_per_s'] * per_tok / 1e9 / ceiling:.1%} |\n\n"
        f"Model: {result['model']}. "
        f"Speed-up {result['speedup']}x ({result['checkpointed_speedup']}x with checkpointing) on {n} "
        "records; "
        f"bf16 matmul ceiling {result['bf16_matmul_gflops']} GFLOP/s.\n",
        encoding="utf-8",
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
