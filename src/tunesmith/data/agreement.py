"""Inter-annotator agreement: Cohen's kappa for two annotators, Fleiss' kappa for three or more.

Ratings are a table: one row per item, one column per annotator, ``None`` where an annotator did
not rate the item. The overall statistic uses only the items every annotator rated; the items
left out are counted. Each label also gets a one-vs-rest kappa (the same statistic on ratings
binarised to "this label" / "another label"), and with three or more annotators every pair gets
its own Cohen's kappa on the items both rated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..logs import get_logger
from .convert import pick_control, read_label_studio
from .formats import check_raw_record, read_raw

log = get_logger(__name__)

ITEM_COLUMN_NAMES = ("item", "item_id", "id")  # taken as the item column when none is named
_OTHER = "\x00other"  # the "rest" class of a one-vs-rest comparison; cannot clash with a label
_LANDIS_KOCH = ((0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"))


@dataclass
class PairAgreement:
    """Cohen's kappa of two annotators over the items both rated."""

    a: str
    b: str
    kappa: float | None
    percent_agreement: float | None
    n_items: int


@dataclass
class LabelAgreement:
    """How often a label was given (over all ratings) and its one-vs-rest kappa."""

    label: str
    count: int
    kappa: float | None


@dataclass
class AgreementReport:
    """Agreement between annotators; ``as_dict()`` is JSON-ready, ``to_text()`` prints as a table.

    ``statistic`` is "cohen_kappa" (two annotators) or "fleiss_kappa" (three or more).
    ``percent_agreement`` is the share of agreeing annotator pairs per item, averaged over the
    items used (for two annotators: the share of items they labelled the same). A kappa is None
    where it is undefined (e.g. one label everywhere); ``notes`` says why.
    """

    statistic: str
    kappa: float | None
    percent_agreement: float | None
    n_items: int
    n_items_used: int
    n_items_dropped: int
    annotators: list[str]
    labels: list[str]
    per_label: list[LabelAgreement] = field(default_factory=list)
    pairwise: list[PairAgreement] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain dicts and lists (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_text(self, max_disagreements: int = 20) -> str:
        """A readable terminal report: headline, per-label table, pairs, disagreements, notes."""
        name = "Cohen's kappa" if self.statistic == "cohen_kappa" else "Fleiss' kappa"
        lines = [
            f"{name}: {_fmt(self.kappa)}{_strength(self.kappa)}   "
            f"percent agreement: {_pct(self.percent_agreement)}",
            f"{len(self.annotators)} annotators, {len(self.labels)} labels, {self.n_items} items "
            f"({self.n_items_used} used, {self.n_items_dropped} dropped for missing ratings)",
            "",
            *_table(
                ["label", "count", "kappa (one-vs-rest)"],
                [[x.label, x.count, _fmt(x.kappa)] for x in self.per_label],
            ),
        ]
        if self.pairwise:
            rows = [[p.a, p.b, _fmt(p.kappa), _pct(p.percent_agreement), p.n_items] for p in self.pairwise]
            lines += [
                "",
                "Pairwise Cohen's kappa",
                *_table(["annotator", "annotator", "kappa", "agree", "items"], rows),
            ]
        if self.disagreements:
            shown = self.disagreements[:max_disagreements]
            rows = [[d["item"], *(d["labels"][a] or "-" for a in self.annotators)] for d in shown]
            lines += ["", f"Disagreements: {len(self.disagreements)} item(s)"]
            lines += _table(["item", *self.annotators], rows)
            if len(self.disagreements) > len(shown):
                lines.append(f"... and {len(self.disagreements) - len(shown)} more")
        if self.notes:
            lines += ["", "Notes:", *(f"  - {n}" for n in self.notes)]
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _strength(kappa: float | None) -> str:
    if kappa is None:
        return ""
    # Landis & Koch (1977) bands, the usual plain-words reading of a kappa.
    word = next((w for upper, w in _LANDIS_KOCH if kappa <= upper), "almost perfect")
    return f" ({word})"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _kappa(rows: list[list[str]]) -> float | None:
    """Cohen's (2 columns) or Fleiss' (3+) kappa of complete rows; None where undefined."""
    if not rows or len({r for row in rows for r in row}) < 2:
        return None  # chance agreement is 1, so kappa is 0/0
    if len(rows[0]) == 2:
        from sklearn.metrics import cohen_kappa_score

        value = cohen_kappa_score([r[0] for r in rows], [r[1] for r in rows])
    else:
        from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

        value = fleiss_kappa(aggregate_raters(rows)[0], method="fleiss")
    return float(value) if math.isfinite(value) else None


def _percent_agreement(rows: list[list[str]]) -> float | None:
    # Observed agreement as Fleiss defines it (share of agreeing rater pairs per item); neither
    # library returns it on its own, so it is computed here.
    if not rows:
        return None
    m = len(rows[0])
    per_item = [sum(row.count(v) * (row.count(v) - 1) for v in set(row)) / (m * (m - 1)) for row in rows]
    return sum(per_item) / len(per_item)


def _check_shape(items: list[str], ratings: list[list[str | None]], annotators: list[str]) -> None:
    if len(annotators) < 2:
        raise DatasetError(
            f"agreement needs at least 2 annotators; found {len(annotators)} ({', '.join(annotators)})"
        )
    if len(set(annotators)) != len(annotators):
        raise DatasetError(f"annotator names must be unique; got {', '.join(annotators)}")
    if not items or len(items) != len(ratings):
        raise DatasetError(
            f"need one row of ratings per item; got {len(items)} items and {len(ratings)} rows"
        )
    for item, row in zip(items, ratings, strict=True):
        if len(row) != len(annotators):
            raise DatasetError(f"item {item}: {len(row)} ratings for {len(annotators)} annotators")


def _clean(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _one_vs_rest(rows: list[list[str]], label: str) -> list[list[str]]:
    return [[r if r == label else _OTHER for r in row] for row in rows]


def _pairs(rows: list[list[str | None]], annotators: list[str]) -> list[PairAgreement]:
    out = []
    for i, j in combinations(range(len(annotators)), 2):
        both = [[row[i], row[j]] for row in rows if row[i] is not None and row[j] is not None]
        out.append(
            PairAgreement(annotators[i], annotators[j], _kappa(both), _percent_agreement(both), len(both))
        )
    return out


def _disagreements(
    items: list[str], rows: list[list[str | None]], annotators: list[str]
) -> list[dict[str, Any]]:
    return [
        {"item": item, "labels": dict(zip(annotators, row, strict=True))}
        for item, row in zip(items, rows, strict=True)
        if len({r for r in row if r is not None}) > 1
    ]


def compute_agreement(
    items: list[str], ratings: list[list[str | None]], annotators: list[str]
) -> AgreementReport:
    """Agreement of ``annotators`` over ``items``.

    Args:
        items: item ids, one per row of ``ratings``.
        ratings: one row per item, one label per annotator; None (or "") where not rated.
        annotators: annotator names, one per column of ``ratings``.

    Returns:
        AgreementReport: Cohen's kappa (2 annotators) or Fleiss' kappa (3+) on the items every
        annotator rated, percent agreement, one-vs-rest kappa per label, pairwise Cohen's kappa
        (3+ annotators), and the items the annotators disagree on.

    Raises:
        DatasetError: fewer than 2 annotators, duplicate names, or ratings of the wrong shape.
    """
    _check_shape(items, ratings, annotators)
    items = [str(i) for i in items]
    rows = [[_clean(r) for r in row] for row in ratings]
    used: list[list[str]] = [row for row in rows if None not in row]  # type: ignore[misc]
    labels = sorted({r for row in rows for r in row if r is not None})
    report = AgreementReport(
        statistic="cohen_kappa" if len(annotators) == 2 else "fleiss_kappa",
        kappa=_kappa(used),
        percent_agreement=_percent_agreement(used),
        n_items=len(rows),
        n_items_used=len(used),
        n_items_dropped=len(rows) - len(used),
        annotators=list(annotators),
        labels=labels,
        pairwise=_pairs(rows, annotators) if len(annotators) > 2 else [],
        disagreements=_disagreements(items, rows, annotators),
    )
    for label in labels:
        count = sum(row.count(label) for row in rows)
        report.per_label.append(LabelAgreement(label, count, _kappa(_one_vs_rest(used, label))))
    _add_notes(report, used)
    return report


def _add_notes(report: AgreementReport, used: list[list[str]]) -> None:
    if report.n_items_dropped:
        report.notes.append(
            f"{report.n_items_dropped} item(s) lacked a rating from some annotator and were left out of the "
            "overall and per-label kappa"
        )
    if not used:
        report.notes.append("no item was rated by every annotator, so kappa cannot be computed")
    elif report.kappa is None:
        report.notes.append(
            f"kappa is undefined: every rating on the {len(used)} item(s) used is {used[0][0]!r} "
            "(chance agreement is 100%)"
        )
    undefined = [x.label for x in report.per_label if x.kappa is None]
    if used and undefined:
        report.notes.append(
            f"one-vs-rest kappa undefined for {', '.join(undefined)}: the label is given in every rating "
            "or in none of the items used"
        )
    for p in report.pairwise:
        if p.kappa is None:
            report.notes.append(f"{p.a} vs {p.b}: kappa undefined ({p.n_items} shared item(s), one label)")


def _item_column(columns: list[str], wanted: str | None, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(f"no column {wanted!r}; columns found: {', '.join(columns)}", str(path))
        return wanted
    auto = next((c for c in columns if c.strip().lower() in ITEM_COLUMN_NAMES), None)
    if auto is not None:
        log.info("using column %r of %s as the item id", auto, path)
    return auto


def agreement_from_csv(
    path: str | Path, item_column: str | None = None, annotator_columns: list[str] | None = None
) -> AgreementReport:
    """Agreement from a CSV with one row per item and one column of labels per annotator.

    Args:
        path: the .csv file (UTF-8, header row). Empty cells are missing ratings.
        item_column: column holding the item id. Default: a column named item, item_id or id
            (any case) if there is one, else items are named by their line number.
        annotator_columns: columns holding the labels; default: every other column.

    Raises:
        DatasetError: naming the file; the columns found when a named one is missing or fewer
            than two annotator columns remain.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise DatasetError("expected a .csv file (one row per item, one column per annotator)", str(path))
    records = [(line, check_raw_record(rec, path, i, line)) for i, (line, rec) in enumerate(read_raw(path))]
    columns = list(records[0][1])
    item_col = _item_column(columns, item_column, path)
    annotators = annotator_columns or [c for c in columns if c != item_col]
    missing = [c for c in annotators if c not in columns]
    if missing or len(annotators) < 2:
        problem = (
            f"no column(s) {', '.join(missing)}" if missing else f"{len(annotators)} annotator column(s)"
        )
        raise DatasetError(
            f"{problem}; agreement needs at least 2 annotator columns (columns found: {', '.join(columns)})",
            str(path),
        )
    items = [((rec[item_col] or "").strip() if item_col else "") or f"line {line}" for line, rec in records]
    report = compute_agreement(items, [[rec[c] for c in annotators] for _, rec in records], annotators)
    if item_col is not None:
        report.notes.append(f"items identified by column {item_col!r}")
    return report


def agreement_from_label_studio(path: str | Path, from_name: str | None = None) -> AgreementReport:
    """Agreement from a Label Studio JSON export in which several people annotated each task.

    Reads the single-choice ``choices`` control (``from_name``; default: the only one). Each task
    is an item, each ``completed_by`` user an annotator; cancelled annotations count as missing.

    Raises:
        DatasetError: naming the file (and the task for a multi-choice answer); fewer than two
            annotators; no or several choices controls and no ``from_name``.
    """
    path = Path(path)
    tasks = read_label_studio(path)
    control = pick_control(tasks, ("choices",), from_name, path, "pass from_name")
    labels: list[dict[str, str | None]] = []
    repeated = cancelled = 0
    for task in tasks:
        by_annotator: dict[str, str | None] = {}
        for ann in task.annotations:
            values = ann.values("choices", control)
            if len(values) > 1:
                raise task.error(f"{ann.annotator} selected {len(values)} choices; agreement needs one", path)
            cancelled += ann.cancelled
            repeated += ann.annotator in by_annotator and not ann.cancelled
            if not ann.cancelled and ann.annotator not in by_annotator:
                by_annotator[ann.annotator] = values[0] if values else None
        labels.append(by_annotator)
    annotators = list(dict.fromkeys(a for task_labels in labels for a in task_labels))
    if len(annotators) < 2:
        raise DatasetError(
            f"agreement needs at least 2 annotators; control {control!r} was answered by {len(annotators)}",
            str(path),
        )
    ratings = [[task_labels.get(a) for a in annotators] for task_labels in labels]
    report = compute_agreement([t.id for t in tasks], ratings, annotators)
    if cancelled:
        report.notes.append(f"{cancelled} cancelled annotation(s) counted as missing ratings")
    if repeated:
        report.notes.append(
            f"{repeated} repeated annotation(s) of a task by the same person ignored (first kept)"
        )
    return report
