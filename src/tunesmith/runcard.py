"""The run card (``tunesmith.json``): what every later stage needs to use a run directory.

It is written last and atomically, so a directory without one is an unfinished run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .files import atomic_write_json

RUN_CARD = "tunesmith.json"
FORMAT_VERSION = 1
EXPORTED = "merged"  # RunCard.method of a directory written by `tunesmith export`


def base_model_record(source: Any, revision: str | None) -> dict[str, Any]:
    """The run card's ``base_model`` entry for a resolved model source (``modeling.ModelSource``)."""
    return {
        "source": source.spec,
        "kind": source.kind,
        "content_hash": source.content_hash,
        "revision": revision,
        "license": getattr(source, "license", None),
    }


@dataclass
class RunCard:
    base_model: dict[str, Any]  # spec, kind, content_hash
    template: dict[str, Any]  # fingerprint, end_of_turn token
    system_prompt: str | None
    generation: dict[str, Any]
    data: dict[str, Any]  # path, fingerprint, counts
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: str = "adapter"
    tokenizer: str = "tokenizer"
    method: str = "lora"
    task: str = "chat"  # or "classification": a sequence classifier (tunesmith.classify), not a chat model
    format_version: int = FORMAT_VERSION
    tunesmith_version: str = ""
    # Set by `tunesmith export` only: source run, formats, files, checks (see tunesmith.export).
    export: dict[str, Any] = field(default_factory=dict)

    @property
    def is_export(self) -> bool:
        """True for an exported directory: merged weights in the directory itself, no adapter."""
        return self.method == EXPORTED


def write_run_card(run_dir: str | Path, card: RunCard) -> Path:
    from . import __version__

    card.tunesmith_version = __version__
    path = Path(run_dir) / RUN_CARD
    atomic_write_json(path, asdict(card))
    return path


def read_run_card(run_dir: str | Path) -> RunCard:
    """Load the run card of a finished run.

    Raises:
        RunDirError: the directory is missing, unfinished, or its card is unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / RUN_CARD
    if not path.is_file():
        hint = ""
        if any((run_dir / "checkpoints").glob("checkpoint-*")):
            hint = " It has checkpoints: resume with `tunesmith train CONFIG train.resume=true`."
        raise RunDirError(f"{run_dir}: no {RUN_CARD}, so training there did not finish.{hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        card = RunCard(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: unreadable run card ({str(e)[:200]})") from None
    _check_parts(run_dir, card)
    return card


def _check_parts(run_dir: Path, card: RunCard) -> None:
    """The weights and tokenizer folders the card names are there (an export holds them itself)."""
    if card.is_export:
        return
    for what, name in (("weights", card.adapter), ("tokenizer", card.tokenizer)):
        part = run_dir / str(name)
        if not part.is_dir() or not any(part.iterdir()):
            raise RunDirError(
                f"{run_dir}: its {what} folder {name}/ is missing or empty, so the run cannot be loaded "
                "(was the run directory copied in part?). Copy the whole run directory, or train again"
            )
