"""Resuming after a crash: find the last checkpoint that was written completely, and drop the
metrics a killed process logged after it (the resumed run logs those steps again).

The Trainer writes a checkpoint in place (weights, optimizer, scheduler, RNG states) and its
``trainer_state.json`` last, so a process killed mid-save (SIGKILL, OOM killer, power loss)
leaves a directory without a readable state file. transformers' ``get_last_checkpoint`` picks
the highest-numbered directory regardless; this module skips incomplete ones.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..files import atomic_write_text
from ..logs import get_logger

log = get_logger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE = "trainer_state.json"


def checkpoint_step(path: str | Path) -> int:
    """The global step of ``.../checkpoint-N``."""
    m = _CHECKPOINT.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint directory")
    return int(m.group(1))


def is_complete(path: Path) -> bool:
    """True when the checkpoint's trainer state (written last) is there and readable."""
    try:
        json.loads((path / STATE).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def last_complete_checkpoint(folder: str | Path, remove_incomplete: bool = False) -> str | None:
    """The highest-step checkpoint under ``folder`` that was written completely.

    Args:
        folder: the Trainer's output directory (``RUN_DIR/checkpoints``).
        remove_incomplete: delete newer half-written checkpoints (the main process does, so the
            resumed run writes those steps into empty directories).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
        key=checkpoint_step,
        reverse=True,
    )
    for path in found:
        if is_complete(path):
            return str(path)
        log.warning("%s was not written completely (the process stopped while saving); skipping it", path)
        if remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to ``step`` (and drop a line cut short by a kill)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
