"""The evaluation report: metrics.json, report.md, report.html and loss.png, written atomically."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..logs import get_logger

log = get_logger(__name__)

# (key, label, better): better is "lower", "higher" or "" (no direction: length, for instance).
ROWS = [
    ("perplexity", "perplexity (answer tokens)", "lower"),
    ("bleu4", "BLEU-4 (sacrebleu, zh)", "higher"),
    ("rouge1", "ROUGE-1 F1 (jieba words)", "higher"),
    ("rouge2", "ROUGE-2 F1 (jieba words)", "higher"),
    ("rougeL", "ROUGE-L F1 (jieba words)", "higher"),
    ("rouge1_char", "ROUGE-1 F1 (characters)", "higher"),
    ("rouge2_char", "ROUGE-2 F1 (characters)", "higher"),
    ("rougeL_char", "ROUGE-L F1 (characters)", "higher"),
    ("distinct1", "distinct-1", "higher"),
    ("distinct2", "distinct-2", "higher"),
    ("loop_rate", "answers with a looping phrase", "lower"),
    ("mean_chars", "mean answer length (characters)", ""),
    ("mean_tokens", "mean answer length (tokens)", ""),
    ("stop_rate", "answers ended by end-of-turn (not the token limit)", "higher"),
    ("general_perplexity", "general-data perplexity (forgetting)", "lower"),
]
SWEEP_COLUMNS = [
    ("bleu4", "BLEU-4 ↑"),
    ("rougeL", "ROUGE-L ↑"),
    ("distinct2", "distinct-2 ↑"),
    ("loop_rate", "looping ↓"),
    ("stop_rate", "stopped ↑"),
    ("mean_tokens", "mean tokens"),
]
PERSONA_ROWS = [
    ("good_rate", "good answers: in character, on topic, stopped, no loop, no leak", "higher"),
    ("in_character_rate", "in character (judge)", "higher"),
    ("on_topic_rate", "on topic (a topic keyword)", "higher"),
    ("leak_rate", "assistant leak (self-description markers)", "lower"),
    ("stop_rate", "stopped at the end-of-turn token", "higher"),
    ("loop_rate", "looping", "lower"),
    ("distinct2", "distinct-2", "higher"),
    ("mean_chars", "mean answer length (characters)", ""),
    ("rougeL_char", "ROUGE-L F1 vs reference (characters)", "higher"),
    ("general_good_rate", "general questions: correct, stopped, no loop, no leak", "higher"),
    ("general_on_topic_rate", "general questions: correct (answer keyword)", "higher"),
    ("general_stop_rate", "general questions: stopped", "higher"),
    ("general_loop_rate", "general questions: looping", "lower"),
]
_ARROW = {"lower": " ↓", "higher": " ↑", "": ""}


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def _cell(text: str | None) -> str:
    """Table-cell text: HTML-escaped (model output is untrusted), pipes escaped, newlines as <br>."""
    if text is None:
        return "–"
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def loss_points(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) points of training ("train") and validation ("validation") from metrics.jsonl."""
    points: dict[str, list[tuple[int, float]]] = {"train": [], "validation": []}
    if not metrics_jsonl.is_file():
        return points
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a crash: skip it, keep the curve
            continue
        if "loss" in rec:
            points["train"].append((rec.get("step", 0), rec["loss"]))
        if "eval_loss" in rec:
            points["validation"].append((rec.get("step", 0), rec["eval_loss"]))
    return points


def loss_png(points: dict[str, list[tuple[int, float]]]) -> bytes | None:
    """The loss curves as PNG bytes (matplotlib's Agg canvas, no display), or None without points."""
    if not any(points.values()):
        return None
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    for name, style in (("train", "-"), ("validation", "o-")):
        if points[name]:
            steps, losses = zip(*points[name], strict=True)
            ax.plot(steps, losses, style, label=f"{name} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _compare_rows(
    base: dict[str, Any], ft: dict[str, Any], spec: list[tuple[str, str, str]]
) -> list[list[str]]:
    rows = []
    for key, label, better in spec:
        if key not in base and key not in ft:
            continue
        b, f = base.get(key), ft.get(key)
        delta = _num(f - b) if isinstance(b, int | float) and isinstance(f, int | float) else "–"
        rows.append([label + _ARROW[better], _num(b), _num(f), delta])
    return rows


def _metrics_section(m: dict[str, Any]) -> list[str]:
    rows = _compare_rows(m["models"]["base"], m["models"]["fine_tuned"], ROWS)
    out = ["## Metrics", "", _table(["metric", "base", "fine-tuned", "Δ"], rows), ""]
    out.append("BLEU and ROUGE are 0–100; distinct-n and the shares are 0–1. ↑/↓: higher/lower is better.")
    for key, why in m.get("skipped", {}).items():
        out.append(f"- skipped {key}: {why}")
    return out + [""]


def _persona_section(p: dict[str, Any]) -> list[str]:
    rows = _compare_rows(p["models"]["base"], p["models"]["fine_tuned"], PERSONA_ROWS)
    cal, top = p["calibration"]["in_character"], p["calibration"]["on_topic"]
    out = [
        "## Persona",
        "",
        f"Held-out questions: `{p['questions']}`. Shares are 0–1.",
        "",
        _table(["measure", "base", "fine-tuned", "Δ"], rows),
        "",
        f"- in-character judge (character n-grams, trained on `{p['persona_lines']}` against generic "
        f"assistant text): {_num(cal['persona_heldout'])} of {cal['persona_heldout_n']} held-out persona "
        f"lines and {_num(cal['generic_heldout'])} of {cal['generic_heldout_n']} held-out generic lines "
        "judged in character",
    ]
    if top.get("own_reference") is not None:
        out.append(
            f"- topic rule: {_num(top['own_reference'])} of the reference answers on topic for their own "
            f"question, {_num(top['other_reference'])} for another question's"
        )
    rows = [
        [
            _cell(e["question"]),
            _cell(e["base"]),
            _cell(e["fine_tuned"]),
            "✓" if e["fine_tuned_verdict"]["good"] else "✗",
        ]
        for e in p["examples"]
    ]
    return out + ["", _table(["question", "base", "fine-tuned", "good"], rows), ""]


def _sweep_section(sweep: list[dict[str, Any]]) -> list[str]:
    rows = []
    for s in sweep:
        setting = ", ".join(f"{k}={v}" for k, v in s["setting"].items())
        rows.append([setting] + [_num(s["metrics"].get(key)) for key, _ in SWEEP_COLUMNS])
    return [
        "## Decoding sweep (fine-tuned model)",
        "",
        "Other settings as in the run card.",
        "",
        _table(["setting", *(label for _, label in SWEEP_COLUMNS)], rows),
        "",
    ]


def _samples_section(samples: list[dict[str, Any]]) -> list[str]:
    rows = [
        [str(i + 1), _cell(s["prompt"]), _cell(s["reference"]), _cell(s["base"]), _cell(s["fine_tuned"])]
        for i, s in enumerate(samples)
    ]
    return ["## Sample answers", "", _table(["#", "prompt", "reference", "base", "fine-tuned"], rows), ""]


def render_markdown(m: dict[str, Any], has_plot: bool) -> str:
    """The report as Markdown (tables; the loss plot linked as loss.png)."""
    d = m["data"]
    out = [
        f"# Evaluation of `{m['run_dir']}`",
        "",
        f"- data: `{d['path']}`: {d['records']} records, {d['with_reference']} with a reference answer",
        f"- base: {m['base']['label']}",
        f"- decoding: {', '.join(f'{k}={v}' for k, v in m['sampling'].items())}",
        f"- took {m['seconds']:.0f} s",
        "",
    ]
    out += _metrics_section(m)
    if m.get("persona"):
        out += _persona_section(m["persona"])
    if m.get("general"):
        g = m["general"]
        out += [
            f"General data for the forgetting check: `{g['path']}`, records: {g['records']}, "
            "scored without the run's system prompt.",
            "",
        ]
    out += ["## Loss curves", ""]
    out += (
        ["![train and validation loss](loss.png)", ""] if has_plot else ["(no losses in metrics.jsonl)", ""]
    )
    if m.get("sweep"):
        out += _sweep_section(m["sweep"])
    if m.get("samples"):
        out += _samples_section(m["samples"])
    return "\n".join(out)


_CSS = (
    "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "vertical-align:top;text-align:left}th{background:#f4f4f4}code{background:#f4f4f4}"
)


def render_html(markdown_text: str, title: str) -> str:
    """The Markdown report as one HTML page (python-markdown with tables)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(out_dir: Path, m: dict[str, Any], run_dir: Path, generations: list[dict[str, Any]]) -> None:
    """Write metrics.json, generations.jsonl, loss.png, report.md and report.html into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = loss_png(loss_points(run_dir / "metrics.jsonl"))
    if png:
        atomic_write_bytes(out_dir / "loss.png", png)
    atomic_write_json(out_dir / "metrics.json", m)
    lines = (json.dumps(g, ensure_ascii=False) for g in generations)
    atomic_write_text(out_dir / "generations.jsonl", "".join(line + "\n" for line in lines))
    md = render_markdown(m, png is not None)
    atomic_write_text(out_dir / "report.md", md + "\n")
    atomic_write_text(out_dir / "report.html", render_html(md, f"Evaluation of {run_dir}"))
    log.info("report written to %s", out_dir)
