"""The run card (``tunesmith.json``): the one contract between training and every later stage.

It is written last and atomically, so a directory without one is an unfinished run.
``RunCard.load(run_dir)`` is the only way chat, eval, serve, the web UI, export and classify learn
what was trained: base model (and whether it runs custom code), template text with its fingerprint
and end-of-turn token, system prompt, max length, compute dtype, sampling defaults and where the
weights are. Nothing re-reads ``config.yaml``. Cards of format 1 are migrated on read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import RunDirError
from .files import atomic_write_json
from .generation import Sampling

RUN_CARD = "tunesmith.json"
FORMAT_VERSION = 2
DEFAULT_MAX_LENGTH = 384  # what a format-1 card without config.yaml is taken to have trained with
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
    template: dict[str, Any]  # text, fingerprint, end_of_turn token (empty for a classifier)
    system_prompt: str | None
    generation: dict[str, Any]  # sampling defaults: exactly the fields of generation.Sampling
    data: dict[str, Any]  # path, fingerprint, counts
    max_length: int | None = None  # tokens per training example; evaluation truncates alike
    trust_remote_code: bool = False  # the base model runs code from its own folder
    dtype: str | None = None  # the compute dtype training used
    compute: dict[str, Any] = field(default_factory=dict)  # why that dtype (measured rates), threads
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: str = "adapter"
    tokenizer: str = "tokenizer"
    method: str = "lora"
    task: str = (
        "chat"  # or "classification": a sequence classifier (tunesmith.training.classifier), not a chat model
    )
    format_version: int = FORMAT_VERSION
    tunesmith_version: str = ""
    # Set by `tunesmith export` only: source run, formats, files, checks (see tunesmith.export).
    export: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunCard:
        """The card of a finished run (or export); see ``read_run_card``."""
        return read_run_card(run_dir)

    @property
    def sampling(self) -> Sampling:
        """The run's sampling defaults."""
        return Sampling.from_dict(self.generation)

    @property
    def end_of_turn(self) -> str | None:
        """The token that ends an answer, as training found it in the template."""
        return self.template.get("end_of_turn")

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
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        if raw.get("format_version", 1) > FORMAT_VERSION:
            raise RunDirError(
                f"{path}: run card format {raw['format_version']} is newer than this tunesmith reads "
                f"({FORMAT_VERSION}); upgrade tunesmith"
            )
        unknown = sorted(set(raw) - {f.name for f in fields(RunCard)})
        if unknown:
            raise TypeError(f"unknown fields {unknown}")
        card = RunCard(**_migrate(raw, run_dir))
        card.sampling  # noqa: B018  (unknown or missing sampling settings fail here, not mid-answer)
    except (json.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: unreadable run card ({str(e)[:200]})") from None
    _check_parts(run_dir, card)
    return card


def _migrate(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A format-1 card as format 2: the fields it lacks, from the files its run wrote beside it.

    Format 1 kept max length and trust_remote_code only in ``config.yaml`` and the template text
    only in the tokenizer folder; they are read from there once, here, and nowhere else.
    """
    if raw.get("format_version", 1) >= 2:
        return raw
    raw = dict(raw, format_version=FORMAT_VERSION)
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}

    def section(name: str) -> dict[str, Any]:
        return cfg[name] if isinstance(cfg.get(name), dict) else {}

    data = raw.get("data") or {}
    raw.setdefault("max_length", data.get("max_length") or section("data").get("max_length"))
    if raw.get("task", "chat") == "chat" and not raw.get("max_length"):
        raw["max_length"] = DEFAULT_MAX_LENGTH
    raw.setdefault("trust_remote_code", bool(section("model").get("trust_remote_code", False)))
    raw.setdefault("dtype", None)
    template = dict(raw.get("template") or {})
    if template and "text" not in template:
        template["text"] = _tokenizer_template(run_dir / str(raw.get("tokenizer", "tokenizer")), run_dir)
    raw["template"] = template
    return raw


def _tokenizer_template(folder: Path, run_dir: Path) -> str | None:
    """The chat template a saved tokenizer holds (chat_template.jinja or tokenizer_config.json)."""
    for where in (folder, run_dir):  # an export keeps its tokenizer files in the directory itself
        jinja = where / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        conf = where / "tokenizer_config.json"
        if conf.is_file():
            value = json.loads(conf.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(value, str):
                return value
    return None


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
