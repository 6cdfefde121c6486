"""`tunesmith data inspect`: what is in a data file, and what is wrong with it."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import textcheck
from .dedup import near_duplicate_clusters
from .formats import (
    FORMATS,
    BadRecord,
    Conversation,
    detect_format,
    map_strings,
    read_raw,
    surrogate_field,
    validate_conversation,
    walk_strings,
)


@dataclass
class Row:
    """One record as the checks see it: raw fields plus prompt/answer text when it parses."""

    index: int
    raw: Any
    fmt: str | None = None
    prompt: str = ""
    answer: str = ""
    error: str | None = None
    texts: list[str] = field(default_factory=list)


def _strings(obj: Any) -> list[str]:
    """Every string inside a record, at any depth."""
    return [s for _, s in walk_strings(obj)]


def to_rows(raw_records: list[tuple[int | None, Any]], fmt: str = "auto") -> list[Row]:
    """Parse what parses; keep the error of what does not (inspect reports, it never stops)."""
    rows = []
    for i, (_line, rec) in enumerate(raw_records):
        row = Row(i, rec, texts=_strings(rec))
        try:
            if not isinstance(rec, dict):
                raise BadRecord(f"record is {type(rec).__name__}, not an object")
            row.fmt = detect_format(rec) if fmt == "auto" else fmt
            conv = FORMATS.get(row.fmt)(rec)
            validate_conversation(conv)
            row.prompt = "\n".join(m["content"] for m in conv if m["role"] == "user")
            row.answer = conv[-1]["content"]
        except BadRecord as e:
            row.error = str(e)
        rows.append(row)
    return rows


def length_stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    q = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else [values[0]] * 19
    return {
        "min": min(values),
        "median": statistics.median(values),
        "p95": round(q[18], 1),
        "max": max(values),
        "mean": round(statistics.fmean(values), 1),
    }


def histogram(values: list[int], bins: int = 20) -> dict[str, list[float]]:
    """Equal-width histogram as plain lists (JSON-friendly)."""
    import numpy as np

    if not values:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 1) for e in edges], "counts": [int(c) for c in counts]}


def _fields(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per top-level field: its types, how often it is missing, and how often empty."""
    names: dict[str, None] = {}
    for r in rows:
        if isinstance(r.raw, dict):
            names.update(dict.fromkeys(r.raw))
    out = {}
    for name in names:
        types: Counter = Counter()
        missing = empty = 0
        for r in rows:
            if not isinstance(r.raw, dict) or name not in r.raw or r.raw[name] is None:
                missing += 1
                continue
            v = r.raw[name]
            types[type(v).__name__] += 1
            empty += (isinstance(v, str) and not v.strip()) or (isinstance(v, list | dict) and not v)
        out[name] = {"types": dict(types), "missing": missing, "empty": empty}
    return out


def _duplicates(rows: list[Row], near_threshold: float, examples: int) -> dict[str, Any]:
    keys = [json.dumps(r.raw, ensure_ascii=False, sort_keys=True) for r in rows]
    ok = [r for r in rows if r.error is None]
    clusters = near_duplicate_clusters([f"{r.prompt}\n{r.answer}" for r in ok], threshold=near_threshold)
    answers = Counter(r.answer for r in ok)
    return {
        "exact_duplicate_records": len(keys) - len(set(keys)),
        "duplicate_answers": len(ok) - len(answers),
        "duplicate_prompts": len(ok) - len({r.prompt for r in ok}),
        "most_common_answers": [[a, n] for a, n in answers.most_common(examples) if n > 1],
        "near_duplicate_threshold": near_threshold,
        "near_duplicate_clusters": len(clusters),
        "records_in_near_duplicate_clusters": sum(len(c) for c in clusters),
        "near_duplicate_examples": [[ok[i].index for i in c] for c in clusters[:examples]],
    }


def _text_issues(rows: list[Row], examples: int) -> dict[str, Any]:
    loops = [(r.index, p) for r in rows if r.answer and (p := textcheck.looping_phrase(r.answer))]
    control = [r.index for r in rows if any(textcheck.control_chars(t) for t in r.texts)]
    moji = [r.index for r in rows if any(textcheck.is_mojibake(t) for t in r.texts)]
    mixes: Counter = Counter()
    mixed_rows = []
    for r in rows:
        found = {m for t in r.texts if (m := textcheck.unusual_mix(t))}
        if found:
            mixed_rows.append(r.index)
            mixes.update("+".join(sorted(m)) for m in found)
    return {
        "looping_answers": len(loops),
        "looping_examples": [[i, p] for i, p in loops[:examples]],
        "control_char_records": len(control),
        "control_char_examples": control[:examples],
        "mojibake_records": len(moji),
        "mojibake_examples": moji[:examples],
        "mixed_script_records": len(mixed_rows),
        "mixed_script_kinds": textcheck.top(mixes),
        "mixed_script_examples": mixed_rows[:examples],
    }


def token_lengths(rows: list[Row], count: Callable[[Conversation], int], max_length: int) -> dict[str, Any]:
    """Token counts of each valid record (``count`` applies the model's chat template)."""
    lengths = [count(FORMATS.get(r.fmt)(r.raw)) for r in rows if r.error is None]
    return {
        "max_length": max_length,
        "stats": length_stats(lengths),
        "over_max_length": sum(n > max_length for n in lengths),
        "lengths": lengths,
    }


def inspect_file(
    path: str | Path,
    fmt: str = "auto",
    near_threshold: float = 0.8,
    token_count: Callable[[Conversation], int] | None = None,
    max_length: int = 384,
    examples: int = 5,
) -> dict[str, Any]:
    """Build the inspection report of a data file (see docs/data-prep.md for every definition).

    Args:
        token_count: optional function giving a conversation's length in tokens through a
            model's chat template (``tunesmith data inspect --model`` builds one); enables the
            token-length section and the count of records ``max_length`` would truncate.

    Raises:
        DatasetError: only when the file itself cannot be read; bad records are reported.
    """
    raw = read_raw(Path(path))
    broken = [[i, f] for i, (_, rec) in enumerate(raw) if (f := surrogate_field(rec))]
    if broken:  # reported, then replaced: every later step and the printed report is valid UTF-8
        raw = [(n, map_strings(rec, textcheck.fix_surrogates)) for n, rec in raw]
    rows = to_rows(raw, fmt)
    ok = [r for r in rows if r.error is None]
    report: dict[str, Any] = {
        "file": str(path),
        "records": len(rows),
        "formats": dict(Counter(r.fmt for r in ok)),
        "invalid_records": len(rows) - len(ok),
        "invalid_examples": [[r.index, r.error] for r in rows if r.error][:examples],
        "fields": _fields(rows),
        "duplicates": _duplicates(rows, near_threshold, examples),
        "lengths_chars": {
            "prompt": length_stats([len(r.prompt) for r in ok]),
            "answer": length_stats([len(r.answer) for r in ok]),
        },
        "text": {
            **_text_issues(rows, examples),
            "lone_surrogate_records": len(broken),
            "lone_surrogate_examples": broken[:examples],
        },
        "histograms": {
            "prompt_chars": histogram([len(r.prompt) for r in ok]),
            "answer_chars": histogram([len(r.answer) for r in ok]),
        },
    }
    if token_count:
        tokens = token_lengths(rows, token_count, max_length)
        report["histograms"]["tokens"] = histogram(tokens.pop("lengths"))
        report["lengths_tokens"] = tokens
    return report
