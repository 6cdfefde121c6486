"""Render data reports for the terminal and as a self-contained HTML page."""

from __future__ import annotations

import html
import json
from typing import Any


def _stats_line(name: str, st: dict[str, float] | None) -> str:
    if not st:
        return f"  {name:<8} (none)"
    return (
        f"  {name:<8} min {st['min']:>5}  median {st['median']:>6}  p95 {st['p95']:>7}  "
        f"max {st['max']:>6}  mean {st['mean']:>6}"
    )


def inspect_text(rep: dict[str, Any]) -> str:
    """A readable terminal summary of an inspection report."""
    d, t = rep["duplicates"], rep["text"]
    lines = [f"{rep['file']}: {rep['records']} records  formats {rep['formats']}"]
    if rep["invalid_records"]:
        lines.append(f"invalid records: {rep['invalid_records']}  e.g. {rep['invalid_examples'][:3]}")
    lines.append("fields (types · missing · empty):")
    for name, f in rep["fields"].items():
        lines.append(f"  {name:<16} {f['types']} · {f['missing']} · {f['empty']}")
    lines += [
        "duplicates:",
        f"  exact duplicate records {d['exact_duplicate_records']}   duplicate answers "
        f"{d['duplicate_answers']}   duplicate prompts {d['duplicate_prompts']}",
        f"  near-duplicate clusters {d['near_duplicate_clusters']} "
        f"({d['records_in_near_duplicate_clusters']} records, Jaccard ≥ {d['near_duplicate_threshold']})",
        f"  most common answers {d['most_common_answers'][:3]}",
        "lengths in characters:",
        _stats_line("prompt", rep["lengths_chars"]["prompt"]),
        _stats_line("answer", rep["lengths_chars"]["answer"]),
    ]
    if "lengths_tokens" in rep:
        tk = rep["lengths_tokens"]
        lines += [
            f"lengths in tokens ({tk.get('model', 'chat template applied')}):",
            _stats_line("total", tk["stats"]),
            f"  over max_length {tk['max_length']}: {tk['over_max_length']}",
        ]
    lines += [
        "text:",
        f"  answers with a looping phrase {t['looping_answers']}  e.g. {t['looping_examples'][:3]}",
        f"  records with control characters {t['control_char_records']}   mojibake {t['mojibake_records']}"
        f"   unusual script mixes {t['mixed_script_records']} {t['mixed_script_kinds']}",
    ]
    if t.get("lone_surrogate_records"):
        lines.append(
            f"  records with a lone UTF-16 surrogate (half an emoji) {t['lone_surrogate_records']}  "
            f"e.g. [record, field] {t['lone_surrogate_examples'][:3]}; `tunesmith data clean` repairs them"
        )
    return "\n".join(lines)


def _svg_histogram(hist: dict[str, list[float]], title: str, width: int = 480, height: int = 160) -> str:
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        return f"<p>{html.escape(title)}: no data</p>"
    peak = max(counts) or 1
    bw = width / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = (height - 20) * c / peak
        label = html.escape(f"{edges[i]:g}–{edges[i + 1]:g}: {c}")
        bars.append(
            f'<rect x="{i * bw:.1f}" y="{height - 20 - h:.1f}" width="{bw - 1:.1f}" '
            f'height="{h:.1f}" fill="#4a7bd0"><title>{label}</title></rect>'
        )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="11">{edges[0]:g}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{edges[-1]:g}</text>'
    )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}{axis}</svg></figure>'
    )


def inspect_html(rep: dict[str, Any]) -> str:
    """A self-contained HTML page: the terminal summary, histograms, and the full JSON."""
    titles = {
        "prompt_chars": "prompt length (characters)",
        "answer_chars": "answer length (characters)",
        "tokens": "example length (tokens, chat template applied)",
    }
    figs = "".join(_svg_histogram(h, titles.get(k, k)) for k, h in rep.get("histograms", {}).items())
    body = json.dumps({k: v for k, v in rep.items() if k != "histograms"}, ensure_ascii=False, indent=2)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>tunesmith data report: {html.escape(rep['file'])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em}"
        "figure{display:inline-block;margin:1em}</style></head><body>"
        f"<h1>Data report</h1><pre>{html.escape(inspect_text(rep))}</pre>{figs}"
        f"<details><summary>full report (JSON)</summary><pre>{html.escape(body)}</pre></details>"
        "</body></html>"
    )
