"""Persona quality: does a fine-tune answer held-out questions as Zhen Huan, on topic, and stop?

Trains one configuration with tunesmith's defaults (LoRA r=8, alpha=32, dropout 0.1 on
q/k/v/o/gate/up/down; lr 1e-4 unless --lr; batch 2 x accumulation 2; 10 % warmup then linear
decay; weight decay 0.01; max length 384; the system prompt 现在你要扮演皇帝身边的女人--甄嬛),
then runs `tunesmith eval --persona` on the 60 held-out questions of
examples/data/zhenhuan_questions.jsonl (48 persona, 12 general; none from the training data),
base vs tuned, with the general set examples/data/general_replay.json for forgetting (scored
without the persona's system prompt). Writes the result under its --label into
bench/results/persona_quality.json and re-renders bench/results/persona_quality.md from every
label there, so runs of several models and step counts sit side by side.

    # the tutorial's full recipe (3 epochs over all 3,729 records):
    .venv/bin/python bench/persona_quality.py --label gemma3-270m-full
    # stopped part-way (Ctrl-C, a reboot)? the same command with --resume goes on from the last checkpoint
    .venv/bin/python bench/persona_quality.py --label gemma3-270m-full --resume
    # a shorter run: 300 steps over a seeded sample of the records
    .venv/bin/python bench/persona_quality.py --steps 300 --label gemma3-270m-300
    # any local model directory, e.g. Qwen2.5-0.5B-Instruct:
    .venv/bin/python bench/persona_quality.py --model /models/Qwen2.5-0.5B-Instruct --label qwen0.5b-full

Quality numbers do not depend on machine load (decoding is seeded); the wall times do, so the
load average and CPU model are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HUANHUAN = REPO.parent / "shared" / "data" / "huanhuan.json"
QUESTIONS = REPO / "examples" / "data" / "zhenhuan_questions.jsonl"
GENERAL = REPO / "examples" / "data" / "general_replay.json"
RESULTS = REPO / "bench" / "results" / "persona_quality.json"
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
GOALS = {  # what the product aims for, on held-out questions
    "in_character_rate": (">=", 0.80),
    "leak_rate": ("<=", 0.05),
    "stop_rate": (">=", 0.95),
    "loop_rate": ("<=", 0.10),
}


def train(args: argparse.Namespace, out: Path) -> Path:
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    overrides = [
        f"model.source={args.model}",
        f"data.path={args.data}",
        f"data.system_prompt={SYSTEM}",
        "data.val_fraction=0.05",
        f"train.output_dir={out}",
        "train.resume=true" if args.resume else "train.overwrite=true",
        f"train.learning_rate={args.lr}",
        f"train.save_steps={args.save_steps}",
        "generation.temperature=0.5",
        "generation.top_p=0.8",
        "generation.repetition_penalty=1.1",
        f"generation.max_new_tokens={args.max_new_tokens}",
    ]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    if args.sample:
        overrides.append(f"data.sample={args.sample}")
    return run_train(load_config(None, overrides + args.override))


def evaluate(run_dir: Path) -> dict:
    from tunesmith.evaluation import EvalOptions, run_eval

    opts = EvalOptions(persona=QUESTIONS, general=GENERAL, samples=0, batch_size=16, progress=False)
    return run_eval(run_dir, None, opts).metrics


def val_losses(run_dir: Path) -> tuple[float | None, float | None, int]:
    first = last = None
    steps = 0
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        steps = max(steps, rec.get("step", 0))
        if "eval_loss" in rec:
            first = rec["eval_loss"] if first is None else first
            last = rec["eval_loss"]
    return first, last, steps


def summarise(args: argparse.Namespace, run_dir: Path, m: dict, train_s: float, eval_s: float) -> dict:
    import yaml

    from tunesmith.runtime import hardware

    p = m["persona"]
    first, last, steps = val_losses(run_dir)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))  # what was trained
    keep = ("id", "kind", "question", "base", "fine_tuned", "fine_tuned_verdict")
    return {
        "model": cfg["model"]["source"],
        "settings": {
            "steps": steps,
            "sample": cfg["data"].get("sample"),
            "learning_rate": cfg["train"]["learning_rate"],
            "epochs": cfg["train"]["epochs"],
            "max_steps": cfg["train"]["max_steps"],
            "decoding": m["sampling"],
        },
        "validation_loss": {"before": first, "after": last},
        "roleplay_perplexity": {s: m["models"][s].get("perplexity") for s in ("base", "fine_tuned")},
        "general_perplexity": {s: m["models"][s].get("general_perplexity") for s in ("base", "fine_tuned")},
        "persona": p["models"],
        "calibration": p["calibration"],
        "answers": [{k: a[k] for k in keep} for a in p["answers"]],
        "train_s": round(card["metrics"].get("train_runtime_s", train_s)),
        "note": args.note,
        "eval_s": round(eval_s),
        "cpu": hardware.cpu_model(),
        "load_avg_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def render(results: dict) -> str:
    rows = [
        ("good answers (all at once)", "good_rate"),
        ("in character", "in_character_rate"),
        ("on topic", "on_topic_rate"),
        ("assistant leak", "leak_rate"),
        ("stopped at end of turn", "stop_rate"),
        ("looping", "loop_rate"),
        ("general questions right", "general_on_topic_rate"),
        ("general questions good", "general_good_rate"),
    ]
    out = [
        "# Persona quality (bench/persona_quality.py)",
        "",
        "Held-out: 48 persona + 12 general questions (examples/data/zhenhuan_questions.jsonl), "
        "asked with the run's system prompt and decoding defaults (temperature 0.5, top-p 0.8, "
        "repetition penalty 1.1, seed 0). Base = the same model with the adapter off.",
        "",
    ]
    for label, r in results.items():
        p, cal = r["persona"], r["calibration"]
        ic, top = cal["in_character"], cal["on_topic"]
        s = r["settings"]
        out += [
            f"## {label}",
            "",
            f"`{r['model']}`, {s['steps']} steps, lr {s['learning_rate']}, "
            f"{'a sample of ' + str(s['sample']) + ' records' if s['sample'] else 'all records'}; "
            f"training {r['train_s']} s, evaluation {r['eval_s']} s on {r['cpu']} ({r['date']}). "
            + r.get("note", ""),
            "",
            "| measure | base | tuned | goal |",
            "|---|---|---|---|",
        ]
        for name, key in rows:
            goal = GOALS.get(key)
            g = f"{goal[0]} {_pct(goal[1])}" if goal else ""
            out.append(f"| {name} | {_pct(p['base'].get(key))} | {_pct(p['fine_tuned'].get(key))} | {g} |")
        vl, gp, rp = r["validation_loss"], r["general_perplexity"], r["roleplay_perplexity"]
        out += [
            f"| mean answer length (chars) | {p['base']['mean_chars']:.1f} "
            f"| {p['fine_tuned']['mean_chars']:.1f} | |",
            f"| role-play perplexity (references) | {rp['base']:.2f} | {rp['fine_tuned']:.2f} | |",
            f"| general perplexity (no system prompt) | {gp['base']:.2f} | {gp['fine_tuned']:.2f} "
            "| rise < 10 % |",
            "",
            f"Validation loss {vl['before']:.3f} → {vl['after']:.3f}. In-character judge: "
            f"{_pct(ic['persona_heldout'])} of {ic['persona_heldout_n']} held-out persona lines, "
            f"{_pct(ic['generic_heldout'])} of {ic['generic_heldout_n']} held-out other-voice lines. "
            f"Topic rule: {_pct(top['own_reference'])} of references on their own question, "
            f"{_pct(top['other_reference'])} on another's.",
            "",
            "| question | tuned answer | good |",
            "|---|---|---|",
        ]
        for a in [a for a in r["answers"] if a["kind"] == "persona"][:8] + [
            a for a in r["answers"] if a["kind"] == "general"
        ][:3]:
            text = a["fine_tuned"].replace("|", "\\|").replace("\n", " ")
            out.append(f"| {a['question']} | {text} | {'✓' if a['fine_tuned_verdict']['good'] else '✗'} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m", help="any tunesmith model source")
    ap.add_argument("--data", default=str(HUANHUAN), help="training data (default: huanhuan.json)")
    ap.add_argument("--steps", type=int, help="optimizer steps (default: 3 epochs)")
    ap.add_argument("--sample", type=int, help="train on a seeded random sample of N records")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--save-steps", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides (key=value)")
    ap.add_argument("--label", default="", help="name of this configuration in the results (required)")
    ap.add_argument("--work", default="/tmp/tunesmith-persona-bench", help="where the run dir goes")
    ap.add_argument("--run-dir", help="evaluate this finished run instead of training")
    ap.add_argument(
        "--resume", action="store_true", help="continue this label's interrupted run from its last checkpoint"
    )
    ap.add_argument("--note", default="", help="a line saying what this configuration is")
    ap.add_argument("--render-only", action="store_true", help="only re-render the .md from the .json")
    args = ap.parse_args()
    if args.render_only:
        results = json.loads(RESULTS.read_text(encoding="utf-8"))
        RESULTS.with_suffix(".md").write_text(render(results) + "\n", encoding="utf-8")
        return 0
    if not args.label:
        ap.error("--label is required")
    if not Path(args.data).is_file():
        print(f"error: training data {args.data} not found (give --data)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    run_dir = Path(args.run_dir) if args.run_dir else train(args, Path(args.work) / args.label)
    t1 = time.perf_counter()
    metrics = evaluate(run_dir)
    t2 = time.perf_counter()
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    results[args.label] = summarise(args, run_dir, metrics, t1 - t0, t2 - t1)
    RESULTS.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    RESULTS.with_suffix(".md").write_text(render(results) + "\n", encoding="utf-8")
    print(render({args.label: results[args.label]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
