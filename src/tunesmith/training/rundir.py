"""The run directory's lifecycle before training: what may be written, replaced or resumed.

Safe by construction: ``prepare_run_dir`` runs only after the config, the data and the model
source have been validated, and it never deletes anything that is not a tunesmith run. A run it
replaces (``train.overwrite=true``, or an unfinished run without checkpoints) is first moved
aside, next to it; it is deleted only once the new run has taken its first optimizer step
(``RunDir.started``), and moved back if the new run fails before that (``RunDir.rollback``).
"""

from __future__ import annotations

import json
import os
import reprlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, config_from_dict, load_yaml
from ..errors import ConfigError, RunDirError
from ..files import os_error_message
from ..logs import get_logger
from ..runcard import RUN_CARD
from .checkpoints import last_complete_checkpoint

log = get_logger(__name__)

# Everything tunesmith writes into a run directory (weights are in adapter/ or model/).
RUN_ENTRIES = {
    RUN_CARD,
    "config.yaml",
    "metrics.jsonl",
    "data_report.json",
    "clean_report.json",
    "removed.jsonl",
    "checkpoints",
    "tensorboard",
    "adapter",
    "model",
    "merged",
    "tokenizer",
    "eval",
}

# Keys that may differ between a run's recorded config and the config that resumes it: they
# change how far the run goes, how often it logs and saves, where it runs, and what happens after
# training (evaluation, generation defaults). Everything else (the model, LoRA shape, optimizer,
# batch, data handling) must match the checkpoints, so a change there is refused.
RESUMABLE_KEYS = {
    "train.max_steps",
    "train.epochs",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.eval_steps",
    "train.device",
    "train.threads",
    "train.expected_seconds",
    "train.resume",
    "train.overwrite",
    "train.output_dir",
    "data.path",  # the data itself is compared by fingerprint
}
RESUMABLE_SECTIONS = {"eval", "generation", "tune"}


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class RunDir:
    """A prepared run directory; ``replaced`` is the old run moved aside until the new one starts."""

    path: Path
    replaced: Path | None = None
    created: bool = False  # this run created the directory, or found it empty
    was_empty: bool = False  # it existed, empty: a rollback leaves it so
    resuming: bool = False  # continue from the checkpoints already there

    @contextmanager
    def guard(self) -> Iterator[RunDir]:
        """Roll back on any failure (Ctrl-C included) before the new run has started."""
        try:
            yield self
        except BaseException:
            self.rollback()
            raise

    def started(self) -> None:
        """The new run has taken a step: the old run it replaces is deleted now."""
        if self.replaced is not None:
            if self.replaced.is_symlink():  # output_dir was a link: drop the link, not its target
                self.replaced.unlink()
            else:
                shutil.rmtree(self.replaced, ignore_errors=True)
            log.info("removed the replaced run (moved aside to %s)", self.replaced)
            self.replaced = None
        self.created = False

    def rollback(self) -> None:
        """The new run failed before its first step: put the directory back as it was."""
        if self.replaced is None and not self.created:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self.replaced is not None:
            os.replace(self.replaced, self.path)
            log.info("the new run did not start; %s is back as it was", self.path)
            self.replaced = None
        elif self.was_empty:
            self.path.mkdir(exist_ok=True)
        self.created = False


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # an atomic write cut short


def _looks_like_run(path: Path, entries: set[str]) -> bool:
    if RUN_CARD in entries or any((path / "checkpoints").glob("checkpoint-*")):
        return True
    return "config.yaml" in entries and bool(entries & {"metrics.jsonl", "data_report.json"})


def protected_reason(run_dir: Path, inputs: list[str | Path]) -> str | None:
    """Why ``run_dir`` must never be replaced, or None."""
    here = run_dir.resolve()
    cwd = Path.cwd().resolve()
    if here == Path(here.anchor):
        return "the root of the file system"
    if here == Path.home().resolve():
        return "your home directory"
    if here == cwd or here in cwd.parents:
        return "the working directory" if here == cwd else "a parent of the working directory"
    for item in inputs:
        p = Path(item).expanduser().resolve()
        if p == here or here in p.parents:
            return f"where an input of this run lives ({item})"
    return None


def _move_aside(run_dir: Path) -> Path:
    aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(run_dir, aside)
    except OSError as e:
        raise RunDirError(f"cannot move the old run {run_dir} aside: {os_error_message(e)}") from None
    log.info("the old run in %s is moved aside until the new one starts", run_dir)
    return aside


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, body in d.items() if isinstance(body, dict) for k, v in body.items()}


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 6
_REPR.maxlevel = 2


def _short(value: Any) -> str:
    return _REPR.repr(value)


def recorded_config(path: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` as section.key -> value (defaults filled in), or None if unreadable."""
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), str(path))  # ConfigError is a ValueError
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    try:
        return _flat(config_from_dict(raw).to_dict())
    except ConfigError:  # written by another version: compare the keys it has
        return _flat(raw)


def config_changes(recorded: dict[str, Any], cfg: Config) -> dict[str, str]:
    """section.key -> "recorded → now" for every key whose value differs."""
    now = _flat(cfg.to_dict())
    return {
        k: f"{_short(recorded.get(k))} → {_short(now.get(k))}"
        for k in sorted(recorded.keys() | now.keys())
        if k in recorded and k in now and recorded[k] != now[k]
    }


def _check_resumable_config(cfg: Config, run_dir: Path) -> None:
    """Refuse a resume whose config differs from the run's recorded one in a key that matters."""
    recorded = recorded_config(run_dir / "config.yaml")
    if recorded is None:
        log.warning("%s has no readable config.yaml; resuming without comparing configs", run_dir)
        return
    changed = config_changes(recorded, cfg)
    fixed = [k for k in changed if k not in RESUMABLE_KEYS and k.split(".")[0] not in RESUMABLE_SECTIONS]
    if fixed:
        lines = "\n".join(f"  - {k}: {changed[k]}" for k in fixed)
        raise RunDirError(
            f"{run_dir}: the config differs from the one its checkpoints were trained with:\n{lines}\n"
            "Resume with the recorded values (see its config.yaml), or start a new run in another "
            "train.output_dir (or over this one with train.overwrite=true). Keys that may change on "
            f"resume: {', '.join(sorted(RESUMABLE_KEYS - {'train.resume', 'train.overwrite'}))}, "
            f"and the {', '.join(sorted(RESUMABLE_SECTIONS))} sections."
        )


def prepare_run_dir(cfg: Config, inputs: list[str | Path] = ()) -> RunDir:
    """Make ``train.output_dir`` ready for a new or resumed run, refusing anything unsafe.

    Call it only after the config, the data and the model source have been validated.

    Args:
        cfg: the validated config.
        inputs: files and directories the run reads (config, data, model); a directory holding one
            of them is never replaced.

    Raises:
        RunDirError: the directory is not a tunesmith run and not empty, holds a finished run or
            checkpoints that were not asked to be replaced or resumed, is protected (``.``, ``~``,
            a parent of an input), resume would change a fixed config key, or cannot be written.
    """
    run_dir = Path(cfg.train.output_dir)
    t = cfg.train
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"train.output_dir {run_dir} is a file, not a directory; choose another train.output_dir"
        )
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    entries = {e for e in entries if not _is_temp(e)}
    if entries:
        foreign = sorted(entries - RUN_ENTRIES)
        if foreign or not _looks_like_run(run_dir, entries):
            raise RunDirError(
                f"train.output_dir {run_dir} is not empty and is not a tunesmith run (it holds "
                f"{_listed(foreign or sorted(entries))}); tunesmith writes a run into a new or empty "
                "directory and replaces only its own runs. Choose another train.output_dir"
            )
        reason = protected_reason(run_dir, inputs)
        if reason:
            raise RunDirError(
                f"train.output_dir {run_dir} is {reason}; tunesmith never replaces it. "
                "Choose another train.output_dir"
            )
        finished = (run_dir / RUN_CARD).is_file()
        has_ckpt = any((run_dir / "checkpoints").glob("checkpoint-*"))
        if finished and not t.overwrite:
            raise RunDirError(
                f"{run_dir} holds a finished run; choose another train.output_dir or set train.overwrite=true"
            )
        if has_ckpt and not finished and not (t.resume or t.overwrite):
            raise RunDirError(
                f"{run_dir} holds checkpoints of an unfinished run; continue it with train.resume=true "
                "or start over with train.overwrite=true"
            )
        resumable = not finished and last_complete_checkpoint(run_dir / "checkpoints") is not None
        if t.resume and resumable and not t.overwrite:
            _check_resumable_config(cfg, run_dir)
            return RunDir(run_dir, resuming=True)
        # replaced: a finished run (overwrite), checkpoints (overwrite), or an unfinished run
        # without a complete checkpoint, whose logs a fresh start must not append to
        aside = _move_aside(run_dir)
        return RunDir(_make(run_dir, aside), replaced=aside, created=True)
    was_empty = run_dir.is_dir()
    return RunDir(_make(run_dir, None), created=True, was_empty=was_empty)


def _make(run_dir: Path, aside: Path | None) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if aside is not None:
            os.replace(aside, run_dir)
        raise RunDirError(f"cannot create train.output_dir {run_dir}: {os_error_message(e)}") from None
    return run_dir


def check_data_unchanged(run_dir: Path, fingerprint: str) -> None:
    """Refuse to resume a run whose data fingerprint (in its data_report.json) has changed."""
    report = run_dir / "data_report.json"
    if report.is_file():
        old = json.loads(report.read_text(encoding="utf-8")).get("fingerprint")
        if old and old != fingerprint:
            raise RunDirError(
                f"{run_dir}: the data changed since the checkpoints were written "
                f"(fingerprint {old} → {fingerprint}); resume with the same data or start over"
            )


def started_callback(run: RunDir) -> Any:
    """A Trainer callback that calls ``run.started()`` after the first optimizer step."""
    from transformers import TrainerCallback

    class Started(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            run.started()

    return Started()
