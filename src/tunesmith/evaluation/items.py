"""Evaluation records: a prompt to answer and, where the data has one, the reference answer.

Read more leniently than training data: a record whose last turn is a user turn, or an alpaca
record with an empty ``output``, is a prompt without a reference and still gets the
reference-free metrics. Everything else is checked as strictly as for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.formats import (
    FORMATS,
    BadRecord,  # the readers' internal error, turned into DatasetError with file and record below
    Conversation,
    alpaca_from_csv,
    check_raw_record,
    detect_format,
    read_alpaca,
    read_raw,
    validate_conversation,
)
from ..errors import DatasetError

_NO_ANSWER = "(no reference answer)"  # stands in for an empty alpaca output; dropped again at once


@dataclass
class EvalItem:
    """One evaluation record.

    Attributes:
        prompt: the conversation up to and including the user turn to answer.
        reference: the reference answer to that turn, or None.
    """

    prompt: Conversation
    reference: str | None

    @property
    def conversation(self) -> Conversation:
        """Prompt plus reference answer (only meaningful when there is a reference)."""
        return [*self.prompt, {"role": "assistant", "content": self.reference or ""}]

    @classmethod
    def from_conversation(cls, conv: Conversation) -> EvalItem:
        """Split a validated training conversation (ending with the assistant) into prompt + reference."""
        return cls(list(conv[:-1]), conv[-1]["content"])


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _item(rec: dict[str, Any], fmt: str) -> EvalItem:
    kind = detect_format(rec) if fmt == "auto" else fmt
    if kind == "alpaca" and _blank(rec.get("output")):
        msgs = read_alpaca({**rec, "output": _NO_ANSWER})[:-1]
    else:
        msgs = FORMATS.get(kind)(rec)
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
        msgs = msgs[:-1]
    reference = None
    if msgs and msgs[-1]["role"] == "assistant":
        reference, msgs = msgs[-1]["content"], msgs[:-1]
    # The prompt must be a valid conversation that ends with a user turn.
    validate_conversation([*msgs, {"role": "assistant", "content": _NO_ANSWER}])
    return EvalItem(msgs, reference)


def load_eval_items(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[EvalItem]:
    """Read an evaluation data file (.json, .jsonl or .csv, any format ``load_records`` reads).

    Args:
        path: the data file.
        fmt: "auto" or a registered format name.
        limit: keep only the first ``limit`` records.

    Raises:
        DatasetError: the file is missing, malformed or empty, or a record is invalid (naming the
            file, record and field).
    """
    path = Path(path)
    if fmt != "auto":
        FORMATS.get(fmt)
    records = read_raw(path)
    if path.suffix.lower() == ".csv":
        records, fmt = alpaca_from_csv(records, path), "alpaca"
    if limit is not None:
        records = records[:limit]
    items = []
    for index, (lineno, rec) in enumerate(records):
        check_raw_record(rec, path, index, lineno)
        try:
            items.append(_item(rec, fmt))
        except BadRecord as e:
            where = f" (line {lineno})" if lineno else ""
            raise DatasetError(f"{e}{where}", str(path), index) from None
    if not items:
        raise DatasetError("no records to evaluate", str(path))
    return items
