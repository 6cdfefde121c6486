"""Classification records (text + label): read, check and split without leakage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DatasetError
from .convert import import_label_studio
from .formats import check_raw_record, read_raw
from .split import leak_groups, split_indices, take


@dataclass
class Labelled:
    """Classification records: parallel texts and (string) labels, and where they came from."""

    texts: list[str]
    labels: list[str]
    source: str = "file"  # or "label-studio"
    import_report: dict[str, Any] | None = None

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _is_label_studio(rec: Any) -> bool:
    return isinstance(rec, dict) and "data" in rec and "annotations" in rec


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, dict | list) or (isinstance(value, str) and not value.strip())


def load_labelled(dcfg: DataConfig) -> Labelled:
    """Read and check classification data before anything else runs.

    Raises:
        DatasetError: a record without text or label (file, record index, line, fields found),
            fewer than two labels, or a Label Studio export without single-choice answers.
    """
    path = Path(dcfg.path)
    raw = read_raw(path)
    text_f, label_f, source, report = dcfg.text_field, dcfg.label_field, "file", None
    if raw and _is_label_studio(raw[0][1]):
        records, report = import_label_studio(path, mode="classification")
        raw, text_f, label_f, source = [(None, r) for r in records], "text", "label", "label-studio"
    texts, labels = [], []
    for i, (lineno, rec) in enumerate(raw):
        check_raw_record(rec, path, i, lineno)
        where = f" (line {lineno}); fields found: {', '.join(map(str, rec))}"
        if _missing(rec.get(text_f)) or not isinstance(rec.get(text_f), str):
            raise DatasetError(
                f"no text: field {text_f!r} is missing or empty{where}. Set data.text_field to the field "
                "holding the text",
                str(path),
                i,
            )
        if _missing(rec.get(label_f)):
            raise DatasetError(
                f"no label: field {label_f!r} is missing or empty{where}. Classification needs a label "
                "on every record: add it, drop the record, or set data.label_field to the field holding it",
                str(path),
                i,
            )
        texts.append(rec[text_f])
        labels.append(str(rec[label_f]).strip())
    keep = take(list(range(len(texts))), dcfg.limit, dcfg.sample, dcfg.seed)
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if len(set(labels)) < 2:
        found = f"only {sorted(set(labels))}" if labels else "no records"
        raise DatasetError(f"classification needs at least two different labels; found {found}", str(path))
    return Labelled(texts, labels, source, report)


def split_labelled(data: Labelled, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, validation): equal or near-duplicate texts together, labels in proportion."""
    groups = leak_groups(data.texts, data.texts)
    return split_indices(groups, val_fraction, seed, strata=data.labels)
