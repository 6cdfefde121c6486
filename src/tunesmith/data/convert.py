"""Write records in any supported format, convert conversations, and import Label Studio exports.

``to_format`` turns one canonical conversation (from ``load_records``) into a raw record of an
output format; ``write_records`` validates raw records and writes them atomically;
``convert_file`` does both for a whole file. ``import_label_studio`` reads a Label Studio JSON
export into alpaca or classification records and reports every task it skipped.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError
from ..files import atomic_write_text, refuse_input_as_output
from ..logs import get_logger
from ..registry import Registry
from .formats import (
    FORMATS,
    BadRecord,
    Conversation,
    check_raw_record,
    load_records,
    read_raw,
    validate_conversation,
)

log = get_logger(__name__)

Writer = Callable[[Conversation], dict[str, Any]]
WRITERS: Registry[Writer] = Registry("output format")

CSV_COLUMNS = ("instruction", "input", "output")
_EXTENSIONS = {"csv": (".csv",)}
_JSON_EXTENSIONS = (".json", ".jsonl")
_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
LABEL_STUDIO_MODES = ("auto", "pairs", "classification")


@WRITERS.register("alpaca")
def _to_alpaca(conv: Conversation) -> dict[str, Any]:
    system = conv[0]["content"] if conv[0]["role"] == "system" else None
    body = conv[1:] if system is not None else conv
    rec: dict[str, Any] = {"instruction": body[-2]["content"], "input": "", "output": body[-1]["content"]}
    if system is not None:
        rec["system"] = system
    history = [[body[i]["content"], body[i + 1]["content"]] for i in range(0, len(body) - 2, 2)]
    if history:
        rec["history"] = history
    return rec


WRITERS.register("csv", _to_alpaca)  # CSV holds alpaca columns; write_records refuses multi-turn ones


@WRITERS.register("sharegpt")
def _to_sharegpt(conv: Conversation) -> dict[str, Any]:
    return {"conversations": [{"from": _TO_SHAREGPT[m["role"]], "value": m["content"]} for m in conv]}


@WRITERS.register("messages")
def _to_messages(conv: Conversation) -> dict[str, Any]:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in conv]}


def to_format(conv: Conversation, fmt: str) -> dict[str, Any]:
    """Convert one canonical conversation into a raw record of ``fmt``.

    alpaca (and csv): the system message becomes ``system``, earlier turns ``history`` pairs, the
    last user turn ``instruction`` and the last answer ``output``. sharegpt: ``conversations``
    with ``from`` system/human/gpt. messages: OpenAI ``messages``. ``load_records`` reads every
    result back into the same conversation.

    Args:
        conv: messages ``{"role", "content"}`` as returned by ``load_records``.
        fmt: one of ``WRITERS`` (alpaca, csv, messages, sharegpt).

    Raises:
        ConfigError: unknown format. DatasetError: the conversation is not valid.
    """
    writer = WRITERS.get(fmt)
    try:
        validate_conversation(conv)
    except BadRecord as e:
        raise DatasetError(f"cannot convert the conversation: {e}") from None
    except (KeyError, TypeError):
        raise DatasetError(
            "a conversation must be a list of {'role': ..., 'content': ...} messages"
        ) from None
    return writer(conv)


def _check_target(path: Path, fmt: str) -> None:
    WRITERS.get(fmt)
    allowed = _EXTENSIONS.get(fmt, _JSON_EXTENSIONS)
    if path.suffix.lower() not in allowed:
        raise DatasetError(f"format {fmt!r} is written to a {' or '.join(allowed)} file", str(path))


def _check_record(rec: Any, fmt: str, path: Path, index: int) -> None:
    """Refuse a record that ``load_records`` would reject, so a written file always reads back."""
    if not isinstance(rec, dict):
        raise DatasetError(f"record must be an object, got {type(rec).__name__}", str(path), index)
    try:
        validate_conversation(FORMATS.get("alpaca" if fmt == "csv" else fmt)(rec))
    except BadRecord as e:
        raise DatasetError(f"cannot write this {fmt} record: {e}", str(path), index) from None


def _dump(rec: dict[str, Any], path: Path, index: int, indent: int | None = None) -> str:
    try:
        return json.dumps(rec, ensure_ascii=False, allow_nan=False, indent=indent)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"cannot write the record as JSON: {e}", str(path), index) from None


def _json_text(records: list[dict[str, Any]], path: Path) -> str:
    if path.suffix.lower() == ".jsonl":
        return "".join(_dump(r, path, i) + "\n" for i, r in enumerate(records))
    items = (textwrap.indent(_dump(r, path, i, indent=2), "  ") for i, r in enumerate(records))
    return "[\n" + ",\n".join(items) + "\n]\n"


def _csv_text(records: list[dict[str, Any]], path: Path) -> str:
    columns = CSV_COLUMNS + (("system",) if any(r.get("system") for r in records) else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for i, rec in enumerate(records):
        if rec.get("history"):
            raise DatasetError(
                f"a multi-turn conversation ({len(rec['history'])} earlier turn(s) in 'history') cannot "
                "go to CSV, which holds single-turn records; write .json or .jsonl instead",
                str(path),
                i,
            )
        extra = sorted(set(rec) - set(columns) - {"history", "system"})
        if extra:
            raise DatasetError(
                f"field(s) {', '.join(extra)} have no CSV column (columns: {', '.join(columns)}); "
                "drop them or write .json / .jsonl",
                str(path),
                i,
            )
        writer.writerow({c: rec.get(c) or "" for c in columns})
    return buf.getvalue()


def write_records(records: list[dict[str, Any]], path: str | Path, fmt: str) -> None:
    """Write raw records of ``fmt`` to ``path`` atomically (temp file, then rename).

    alpaca, sharegpt and messages go to a JSON array (.json) or JSON Lines (.jsonl); csv goes to
    a .csv file with columns instruction, input, output (and system when any record has one).
    Every record is validated first, so the file always loads with ``load_records``; an
    existing file at ``path`` is left untouched when anything fails.

    Args:
        records: raw records, e.g. from ``to_format``.
        path: output file; its extension picks JSON or JSON Lines.
        fmt: alpaca, csv, messages or sharegpt.

    Raises:
        ConfigError: unknown format. DatasetError: wrong extension, no records, a record that is
            invalid, not JSON-serialisable, or multi-turn (csv), named by index.
    """
    path = Path(path)
    _check_target(path, fmt)
    if not records:
        raise DatasetError("no records to write", str(path))
    for i, rec in enumerate(records):
        _check_record(rec, fmt, path, i)
    text = _csv_text(records, path) if fmt == "csv" else _json_text(records, path)
    atomic_write_text(path, text)
    log.info("wrote %d %s record(s) to %s", len(records), fmt, path)


def convert_file(
    src: str | Path, dst: str | Path, fmt: str, src_format: str = "auto", system_prompt: str | None = None
) -> int:
    """Read ``src`` with ``load_records`` and write every record to ``dst`` in ``fmt``.

    Returns:
        The number of records written. Errors name the record by its index in ``src``.
    """
    refuse_input_as_output(src, [dst])
    records = [to_format(conv, fmt) for conv in load_records(src, src_format, system_prompt)]
    write_records(records, dst, fmt)
    return len(records)


# ---------------------------------------------------------------------------------------------
# Label Studio JSON export: [{"id", "data": {...}, "annotations": [{"result": [...], ...}]}]


@dataclass
class LabelStudioAnnotation:
    """One annotation of a task: who made it, whether it was cancelled (skipped), its results."""

    annotator: str
    cancelled: bool
    results: list[dict[str, Any]]

    def values(self, kind: str, control: str) -> list[str]:
        """The strings a ``textarea`` (value.text) or ``choices`` (value.choices) control holds."""
        key = "text" if kind == "textarea" else "choices"
        out: list[str] = []
        for r in self.results:
            if r.get("type") == kind and r.get("from_name") == control:
                found = (r.get("value") or {}).get(key) or []
                out += [found] if isinstance(found, str) else [str(v) for v in found]
        return out


@dataclass
class LabelStudioTask:
    """One task of an export, with its position in the file and its id."""

    index: int
    id: str
    data: dict[str, Any]
    annotations: list[LabelStudioAnnotation]

    def error(self, message: str, path: Path) -> DatasetError:
        return DatasetError(f"task id {self.id}: {message}", str(path), self.index)


def _annotator(completed_by: Any) -> str:
    # Exports hold a user id, or a user object when "annotator details" were exported.
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "unknown")
    return "unknown" if completed_by is None else str(completed_by)


def _read_task(raw: dict[str, Any], index: int, path: Path) -> LabelStudioTask:
    task = LabelStudioTask(index, str(raw.get("id", index)), {}, [])
    if not isinstance(raw.get("data"), dict):
        raise task.error(
            f"not a Label Studio task: expected 'data' and 'annotations' (found: {', '.join(raw)}); "
            "export the project as 'JSON' (not JSON-MIN or CSV)",
            path,
        )
    task.data = raw["data"]
    annotations = raw.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise task.error("'annotations' must be a list of objects", path)
    for j, ann in enumerate(annotations):
        results = ann.get("result") or []
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise task.error(f"annotations[{j}].result must be a list of objects", path)
        cancelled = bool(ann.get("was_cancelled"))
        task.annotations.append(
            LabelStudioAnnotation(_annotator(ann.get("completed_by")), cancelled, results)
        )
    return task


def read_label_studio(path: str | Path) -> list[LabelStudioTask]:
    """Read the tasks of a Label Studio JSON export (see ``import_label_studio``)."""
    path = Path(path)
    return [
        _read_task(check_raw_record(raw, path, i, line), i, path)
        for i, (line, raw) in enumerate(read_raw(path))
    ]


def label_studio_controls(tasks: list[LabelStudioTask]) -> dict[str, str]:
    """Control name (``from_name``) -> result type, over all annotations that were not cancelled."""
    found: dict[str, str] = {}
    for task in tasks:
        for ann in task.annotations:
            if not ann.cancelled:
                found.update(
                    {r["from_name"]: r["type"] for r in ann.results if "from_name" in r and "type" in r}
                )
    return found


def pick_control(
    tasks: list[LabelStudioTask], kinds: tuple[str, ...], wanted: str | None, path: Path, hint: str
) -> str:
    """The one control of a type in ``kinds`` to read, or ``wanted``; errors list the choices."""
    controls = label_studio_controls(tasks)
    names = sorted(n for n, t in controls.items() if t in kinds)
    listing = ", ".join(f"{n} ({t})" for n, t in sorted(controls.items())) or "none"
    if wanted is not None:
        if wanted not in names:
            raise DatasetError(
                f"no {'/'.join(kinds)} results named {wanted!r}; controls found: {listing}", str(path)
            )
        return wanted
    if len(names) != 1:
        problem = "no" if not names else "several"
        raise DatasetError(
            f"{problem} {'/'.join(kinds)} controls among the results (controls found: {listing}); "
            f"name the one to use ({hint})",
            str(path),
        )
    return names[0]


def _prompt_field(tasks: list[LabelStudioTask], wanted: str | None, path: Path) -> str:
    if wanted is not None:
        return wanted
    shared = set.intersection(*({k for k, v in t.data.items() if isinstance(v, str)} for t in tasks))
    if len(shared) != 1:
        listing = ", ".join(sorted(shared)) or "none"
        raise DatasetError(
            f"cannot tell which task data field holds the text (string fields in every task: {listing}); "
            "pass prompt_field",
            str(path),
        )
    return shared.pop()


def _record(
    task: LabelStudioTask, ann: LabelStudioAnnotation, plan: dict[str, Any], path: Path
) -> dict | None:
    """The record one annotation makes, or None when it holds no answer for the chosen control."""
    text = task.data.get(plan["prompt_field"])
    if not isinstance(text, str) or not text.strip():
        raise task.error(f"data field {plan['prompt_field']!r} is missing or not a non-empty string", path)
    values = [v for v in ann.values(plan["kind"], plan["answer_field"]) if v.strip()]
    if not values:
        return None
    if plan["mode"] == "pairs":
        return {"instruction": text, "input": "", "output": "\n".join(values)}
    if len(values) > 1:
        msg = f"{len(values)} choices selected ({', '.join(values)}); only single-label tasks can be imported"
        raise task.error(msg, path)
    return {"text": text, "label": values[0]}


def _plan(
    tasks: list[LabelStudioTask], mode: str, prompt_field: str | None, answer_field: str | None, path: Path
) -> dict[str, Any]:
    """Which control and data field to read, and the mode that follows from the control's type."""
    if mode not in LABEL_STUDIO_MODES:
        choices = ", ".join(LABEL_STUDIO_MODES)
        raise ConfigError(f"unknown Label Studio import mode {mode!r}; choose one of: {choices}")
    if not tasks:
        raise DatasetError("the export holds no tasks", str(path))
    kinds = {"pairs": ("textarea",), "classification": ("choices",)}.get(mode, ("textarea", "choices"))
    control = pick_control(tasks, kinds, answer_field, path, "pass answer_field, or mode to pick a type")
    kind = label_studio_controls(tasks)[control]
    return {
        "mode": "pairs" if kind == "textarea" else "classification",
        "kind": kind,
        "answer_field": control,
        "prompt_field": _prompt_field(tasks, prompt_field, path),
    }


def import_label_studio(
    path: str | Path, mode: str = "auto", prompt_field: str | None = None, answer_field: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Turn a Label Studio JSON export into training or classification records.

    Each task gives one record, from its first annotation that was not cancelled and answered
    the control. mode "pairs": the task's text becomes ``instruction`` and the textarea text
    ``output`` (several text entries are joined by newlines), making alpaca records.
    mode "classification": ``{"text", "label"}`` from a single-choice ``choices`` control.
    "auto" picks by the type of control found in the results.

    Args:
        path: the export (.json).
        mode: auto, pairs or classification.
        prompt_field: key of ``task["data"]`` holding the text; default: the only string field.
        answer_field: ``from_name`` of the control to read; default: the only one of its type.

    Returns:
        (records, report). The report counts tasks and records and lists, by reason, the ids of
        skipped tasks: "cancelled" (every annotation cancelled), "unannotated", "no_answer"
        (no annotation answered the control); "extra_annotations" counts further answers
        that were not used (one record per task).

    Raises:
        DatasetError: naming the file and the task index and id. ConfigError: unknown mode.
    """
    path = Path(path)
    tasks = read_label_studio(path)
    plan = _plan(tasks, mode, prompt_field, answer_field, path)
    records: list[dict[str, Any]] = []
    skipped: dict[str, list[str]] = {"cancelled": [], "unannotated": [], "no_answer": []}
    extra = 0
    for task in tasks:
        usable = [a for a in task.annotations if not a.cancelled]
        answers = [rec for a in usable if (rec := _record(task, a, plan, path)) is not None]
        extra += max(len(answers) - 1, 0)
        if answers:
            records.append(answers[0])
        else:
            reason = "no_answer" if usable else "cancelled" if task.annotations else "unannotated"
            skipped[reason].append(task.id)
    report = {"tasks": len(tasks), "records": len(records), **plan, "skipped_ids": skipped}
    report["skipped"] = {k: len(v) for k, v in skipped.items()}
    report["extra_annotations"] = extra
    log.info("Label Studio import of %s: %d task(s), %d record(s)", path, len(tasks), len(records))
    if any(report["skipped"].values()):
        log.warning("skipped Label Studio task(s) in %s: %s", path, report["skipped"])
    return records, report


def write_raw(records: list[Any], path: str | Path) -> None:
    """Write records as they are (any fields), atomically: JSON array, JSON Lines or CSV by extension.

    Used by cleaning and splitting, which keep the input's own format and fields.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in records)
        atomic_write_text(path, buf.getvalue())
    elif path.suffix.lower() in (".json", ".jsonl"):
        atomic_write_text(
            path, _json_text(records, path) if records else ("" if path.suffix == ".jsonl" else "[]\n")
        )
    else:
        raise DatasetError("output must be a .json, .jsonl or .csv file", str(path))
