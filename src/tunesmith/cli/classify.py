"""`tunesmith classify RUN_DIR [TEXT ...] [--file F]`: label texts with a classification run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .args import add_device_arg


def _read_texts(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[str | None]]:
    """Texts (and gold labels where a record has one) from a .json/.jsonl/.csv file."""
    from ..data.formats import check_raw_record, read_raw
    from ..errors import DatasetError

    texts: list[str] = []
    gold: list[str | None] = []
    for i, (lineno, rec) in enumerate(read_raw(path)):
        check_raw_record(rec, path, i, lineno)
        text = rec.get(text_field)
        if not isinstance(text, str) or not text.strip():
            where = f" (line {lineno})" if lineno else ""
            raise DatasetError(
                f"no text: field {text_field!r} is missing or empty{where}; fields found: "
                f"{', '.join(map(str, rec))}. Pass --text-field with the field holding the text",
                str(path),
                i,
            )
        label = rec.get(label_field)
        texts.append(text)
        gold.append(None if label is None or not str(label).strip() else str(label).strip())
    return texts, gold


def cmd_classify(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.metrics import label_metrics
    from ..runtime.classifier import load_classifier

    if bool(args.texts) == bool(args.file):
        raise ConfigError("give texts to label, or --file with one record per text (not both)")
    clf = load_classifier(args.run_dir, device=args.device)
    data = clf.card.data
    text_field = args.text_field or data.get("text_field", "text")
    label_field = args.label_field or data.get("label_field", "label")
    if args.file:
        texts, gold = _read_texts(Path(args.file), text_field, label_field)
    else:
        texts, gold = list(args.texts), [None] * len(args.texts)
    preds = clf.predict(texts, batch_size=args.batch_size)

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for text, want, pred in zip(texts, gold, preds, strict=True):
            if args.file or args.output or args.json:
                row: dict[str, Any] = {"text": text, "label": pred["label"], "scores": pred["scores"]}
                if want is not None:
                    row["gold"] = want
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                out.write(f"{pred['label']}\t{pred['scores'][pred['label']]:.3f}\t{text}\n")
    finally:
        if out is not sys.stdout:
            out.close()

    labelled = [(w, p["label"]) for w, p in zip(gold, preds, strict=True) if w is not None]
    if labelled:
        truth, guess = zip(*labelled, strict=True)
        m = label_metrics(list(truth), list(guess))
        unknown = sorted(set(truth) - set(clf.labels))
        print(
            f"{len(labelled)} of {len(texts)} records carry a {label_field!r}: "
            f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
            + (f"; labels the classifier does not know (always wrong): {unknown}" if unknown else ""),
            file=sys.stderr,
        )
    if args.output:
        print(f"wrote {len(preds)} predictions to {args.output}", file=sys.stderr)
    return 0


def add_classify_parser(sub: Any) -> None:
    """Register `tunesmith classify` on the top-level subparsers."""
    p = sub.add_parser(
        "classify",
        help="label texts with a classification run (model.task: classification)",
        description=(
            "Label texts with a classifier run. With TEXT arguments: one line per text, "
            "'label<TAB>probability<TAB>text'. With --file (.json/.jsonl/.csv): one JSON line per "
            "record with the label and every label's probability; records that carry a label "
            "are scored (accuracy, macro-F1). "
            "Example: tunesmith classify runs/classification 'the film was wonderful'"
        ),
    )
    p.add_argument(
        "run_dir", help="a run directory written by `tunesmith train` with model.task: classification"
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to label")
    p.add_argument("--file", help="a .json/.jsonl/.csv file of records to label")
    p.add_argument("--text-field", help="field holding the text (default: the run's data.text_field)")
    p.add_argument("--label-field", help="field holding a gold label to score against (default: the run's)")
    p.add_argument("--output", help="write JSON lines here instead of standard output")
    p.add_argument("--json", action="store_true", help="JSON lines for TEXT arguments too")
    p.add_argument("--batch-size", type=int, default=32)
    add_device_arg(p)
    p.set_defaults(func=cmd_classify)
