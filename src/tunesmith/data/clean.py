"""`tunesmith data clean`: deterministic, configurable cleaning; every removal counted and kept.

Steps, in order: text normalisation (Unicode, mojibake, traditional→simplified, whitespace and
control characters) → missing values → length limits → looping-phrase filter → exact dedup →
near dedup. Removed records go to a side file with their reason.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import fill_section, load_yaml, option
from ..errors import ConfigError, DatasetError
from ..files import sha256_text
from . import textcheck
from .dedup import near_duplicate_clusters
from .formats import map_strings, surrogate_field
from .inspect import Row, to_rows

# Full-width CJK punctuation and ellipses that NFKC would turn into ASCII; Chinese text keeps them.
CJK_PUNCT = set("，。！？：；（）【】「」『』、《》〈〉～…‥")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")


@dataclass
class CleanRecipe:
    unicode: Literal["nfkc", "nfkc_keep_cjk_punct", "nfc", "none"] = option(
        "nfkc_keep_cjk_punct",
        "Unicode normalisation; the default folds full-width letters/digits but keeps ，。！？",
    )
    fix_mojibake: bool = option(True, "repair text decoded with the wrong encoding (ftfy)")
    to_simplified: bool = option(False, "convert traditional Chinese to simplified (OpenCC t2s)")
    whitespace: bool = option(True, "strip ends, collapse runs of spaces, drop control/zero-width characters")
    missing: Literal["drop", "fill"] = option("drop", "records with an empty required field: drop or fill")
    fill_value: str = option("", "text for empty required fields when missing=fill")
    min_answer_chars: int = option(1, "drop answers shorter than this")
    max_answer_chars: int | None = option(None, "drop answers longer than this")
    max_prompt_chars: int | None = option(None, "drop prompts longer than this")
    loop_filter: bool = option(True, "drop answers with a looping phrase")
    loop_ngram: int = option(4, "looping phrase: length in characters")
    loop_min_count: int = option(3, "looping phrase: occurrences (non-overlapping) to count as a loop")
    exact_dedup: bool = option(True, "drop exact duplicate records (after normalisation), keep the first")
    near_dedup: bool = option(True, "drop near-duplicate records (prompt + answer), keep the first")
    near_threshold: float = option(0.85, "near dedup: Jaccard similarity of character 3-grams")
    near_tokenizer: Literal["auto", "char", "word"] = option(
        "auto", "near dedup shingles: characters or jieba words"
    )


def load_recipe(spec: str | Path | dict[str, Any] | None) -> CleanRecipe:
    """'default'/None → defaults; a YAML file or a mapping → validated like the train config."""
    if spec is None or spec == "default":
        return CleanRecipe()
    source = "clean recipe"
    if isinstance(spec, dict):
        raw = spec
    else:
        source = str(spec)
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read cleaning recipe: {e.strerror}", source) from None
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8 text; save it as UTF-8", source) from None
        raw = load_yaml(text, source) or {}
    if not isinstance(raw, dict):
        raise ConfigError("a cleaning recipe is a mapping of keys", source)
    recipe, problems = CleanRecipe(), []
    fill_section(recipe, raw, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return recipe


def _unicode(text: str, mode: str) -> str:
    if mode == "none":
        return text
    if mode == "nfc":
        return unicodedata.normalize("NFC", text)
    if mode == "nfkc":
        return unicodedata.normalize("NFKC", text)
    return "".join(
        c if c in CJK_PUNCT else unicodedata.normalize("NFKC", c) for c in unicodedata.normalize("NFC", text)
    )


def make_text_cleaner(recipe: CleanRecipe):  # noqa: ANN201
    """One function applying the recipe's text steps to a string."""
    t2s = None
    if recipe.to_simplified:
        from opencc import OpenCC

        t2s = OpenCC("t2s")

    def clean_text(text: str) -> str:
        if recipe.fix_mojibake:
            import ftfy

            text = ftfy.fix_encoding(text)
        text = _unicode(text, recipe.unicode)
        if t2s is not None:
            text = t2s.convert(text)
        if recipe.whitespace:
            text = textcheck.strip_control(text.replace("\r\n", "\n"))
            text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()
        return text

    return clean_text


@dataclass
class CleanResult:
    records: list[Any]
    removed: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def _fill_missing(rec: dict[str, Any], value: str) -> dict[str, Any]:
    """Fill empty required alpaca/message fields with ``value`` (missing=fill)."""
    rec = copy.deepcopy(rec)
    if "instruction" in rec or "output" in rec:  # alpaca
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                rec[key] = value
    for msg in rec.get("messages", []) + rec.get("conversations", []):
        for key in ("content", "value"):
            if key in msg and (not isinstance(msg[key], str) or not msg[key].strip()):
                msg[key] = value
    return rec


def _drop_reason(row: Row, recipe: CleanRecipe) -> tuple[str, str] | None:
    if len(row.answer) < recipe.min_answer_chars:
        return "too_short", f"answer has {len(row.answer)} characters"
    if recipe.max_answer_chars is not None and len(row.answer) > recipe.max_answer_chars:
        return "too_long", f"answer has {len(row.answer)} characters"
    if recipe.max_prompt_chars is not None and len(row.prompt) > recipe.max_prompt_chars:
        return "too_long", f"prompt has {len(row.prompt)} characters"
    if recipe.loop_filter:
        phrase = textcheck.looping_phrase(row.answer, recipe.loop_ngram, recipe.loop_min_count)
        if phrase:
            return "looping_phrase", phrase
    return None


def _normalise(
    raw: list[tuple[int | None, Any]], recipe: CleanRecipe, removed: list, stats: Counter
) -> list[Row]:
    clean_text = make_text_cleaner(recipe)
    out = []
    for row in to_rows(raw):
        if row.error and row.fmt is None:  # not a record of any format: nothing to repair
            removed.append({"index": row.index, "reason": "invalid", "detail": row.error, "record": row.raw})
            continue
        new = map_strings(row.raw, clean_text)
        stats["text_changed"] += new != row.raw
        (fixed,) = to_rows([(None, new)])
        if fixed.error and recipe.missing == "fill":
            (fixed,) = to_rows([(None, _fill_missing(new, recipe.fill_value))])
            stats["filled"] += fixed.error is None
        fixed.index = row.index
        if fixed.error:
            reason = "missing_value" if ("empty" in fixed.error or "missing" in fixed.error) else "invalid"
            removed.append({"index": row.index, "reason": reason, "detail": fixed.error, "record": row.raw})
            continue
        out.append(fixed)
    return out


def _dedup(rows: list[Row], recipe: CleanRecipe, removed: list) -> list[Row]:
    if recipe.exact_dedup:
        first: dict[str, int] = {}
        keep = []
        for r in rows:
            key = json.dumps(r.raw, ensure_ascii=False, sort_keys=True)
            if key in first:
                removed.append(
                    {
                        "index": r.index,
                        "reason": "exact_duplicate",
                        "duplicate_of": first[key],
                        "record": r.raw,
                    }
                )
            else:
                first[key] = r.index
                keep.append(r)
        rows = keep
    if recipe.near_dedup and rows:
        texts = [f"{r.prompt}\n{r.answer}" for r in rows]
        clusters = near_duplicate_clusters(texts, recipe.near_threshold, tokenizer=recipe.near_tokenizer)
        drop = {}
        for c in clusters:
            for i in c[1:]:
                drop[i] = rows[c[0]].index
        for i, r in enumerate(rows):
            if i in drop:
                removed.append(
                    {"index": r.index, "reason": "near_duplicate", "duplicate_of": drop[i], "record": r.raw}
                )
        rows = [r for i, r in enumerate(rows) if i not in drop]
    return rows


def _repair_surrogates(raw: list[tuple[int | None, Any]], stats: Counter) -> list[tuple[int | None, Any]]:
    """Replace lone UTF-16 surrogates (half an emoji; they cannot be written as UTF-8) by U+FFFD.

    Always on, before the recipe: a record holding one could not even be written to removed.jsonl.
    """
    out = []
    for lineno, rec in raw:
        if surrogate_field(rec) is not None:
            rec = map_strings(rec, textcheck.fix_surrogates)
            stats["lone_surrogates_replaced"] += 1
        out.append((lineno, rec))
    return out


def clean_records(raw: list[tuple[int | None, Any]], recipe: CleanRecipe | None = None) -> CleanResult:
    """Apply ``recipe`` to raw records (as read by ``read_raw``); nothing is dropped silently."""
    recipe = recipe or CleanRecipe()
    removed: list[dict[str, Any]] = []
    stats: Counter = Counter()
    raw = _repair_surrogates(raw, stats)
    rows = _normalise(raw, recipe, removed, stats)
    kept = []
    for r in rows:
        why = _drop_reason(r, recipe)
        if why:
            removed.append({"index": r.index, "reason": why[0], "detail": why[1], "record": r.raw})
        else:
            kept.append(r)
    kept = _dedup(kept, recipe, removed)
    removed.sort(key=lambda x: x["index"])
    report = {
        "input_records": len(raw),
        "output_records": len(kept),
        "removed": dict(sorted(Counter(x["reason"] for x in removed).items())),
        "modified": dict(stats),
        "recipe": asdict(recipe),
    }
    report["fingerprint"] = sha256_text(json.dumps(report, sort_keys=True, ensure_ascii=False))[:16]
    assert report["input_records"] == report["output_records"] + len(removed)  # nothing vanishes
    return CleanResult([r.raw for r in kept], removed, report)


def side_paths(out: Path) -> tuple[Path, Path]:
    """Default paths of the removed-records file and the report next to an output file."""
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".removed.jsonl"), stem.with_name(stem.name + ".report.json")


def clean_file(
    path: str | Path,
    out: str | Path,
    recipe: CleanRecipe | None = None,
    removed_path: str | Path | None = None,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """Clean ``path`` into ``out`` (same record format), write removed records and the report.

    Every file is written atomically, so an existing output is never left half-written.

    Returns:
        The cleaning report, with the paths written.
    """
    from ..files import atomic_write_json, refuse_input_as_output
    from .convert import write_raw
    from .formats import alpaca_from_csv, read_raw

    path, out = Path(path), Path(out)
    default_removed, default_report = side_paths(out)
    removed_path = Path(removed_path or default_removed)
    report_path = Path(report_path or default_report)
    refuse_input_as_output(path, [out, removed_path, report_path])
    raw = read_raw(path)
    if path.suffix.lower() == ".csv":
        raw = alpaca_from_csv(raw, path)
    result = clean_records(raw, recipe)
    write_raw(result.removed, removed_path)
    report = {**result.report, "input": str(path), "output": str(out), "removed_file": str(removed_path)}
    atomic_write_json(report_path, report)
    if not result.records:
        raise DatasetError(f"cleaning removed every record; reasons are in {removed_path}", str(path))
    write_raw(result.records, out)
    return report
