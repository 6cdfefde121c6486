"""Replay against forgetting: mix general-purpose examples into the training set at a fixed ratio.

With ``data.replay_path`` and ``data.replay_ratio: r``, a share ``r`` of the training examples comes
from the replay file (any conversation format ``data.path`` accepts), the rest from the task data:
``n_replay = round(n_task × r / (1 - r))``, drawn without repetition while the file lasts and
cycling through it (reshuffled) after that. The two are interleaved evenly; the Trainer shuffles
each epoch anyway, so every batch holds about ``r`` replay examples on average. The validation
split (and so early stopping and the reported eval loss) is task data only.

Replay records get no ``data.system_prompt``: they stand for the model's general behaviour, not
the persona being trained.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ..config import DataConfig
from ..data import load_records
from ..data.formats import Conversation
from ..files import sha256_text
from ..logs import get_logger
from ..templates import ChatFormat, Example, encode_all

log = get_logger(__name__)


@dataclass
class Replay:
    path: str
    ratio: float
    convs: list[Conversation]

    @property
    def fingerprint(self) -> str:
        return sha256_text(json.dumps([self.convs, self.ratio], ensure_ascii=False, sort_keys=True))[:16]


def load_replay(dcfg: DataConfig) -> Replay | None:
    """Read and validate the replay file (before any model loads), or None when replay is off.

    Raises:
        DatasetError: naming the file, record and field, as for ``data.path``.
    """
    if not dcfg.replay_path:
        return None
    return Replay(dcfg.replay_path, dcfg.replay_ratio, load_records(dcfg.replay_path, "auto", None))


def _interleave(task: list[Example], extra: list[Example]) -> list[Example]:
    """Spread ``extra`` evenly through ``task``."""
    out: list[Example] = []
    j = 0
    for i, ex in enumerate(task):
        out.append(ex)
        while j < len(extra) and (j + 1) * len(task) <= (i + 1) * len(extra):
            out.append(extra[j])
            j += 1
    return out + extra[j:]


def mix_replay(
    fmt: ChatFormat, task: list[Example], replay: Replay, max_length: int, seed: int
) -> tuple[list[Example], dict[str, Any]]:
    """The training examples with the replay share mixed in, and a report for ``data_report.json``."""
    pool, rep = encode_all(fmt, replay.convs, max_length)
    want = round(len(task) * replay.ratio / (1 - replay.ratio))
    rng = random.Random(seed)
    drawn: list[Example] = []
    while pool and len(drawn) < want:
        batch = pool[:]
        rng.shuffle(batch)
        drawn += batch[: want - len(drawn)]
    if want > len(pool):
        log.warning(
            "replay: %d examples wanted, %s has %d usable; each is used about %.1f times",
            want,
            replay.path,
            len(pool),
            want / max(len(pool), 1),
        )
    report = {
        "path": replay.path,
        "ratio": replay.ratio,
        "fingerprint": replay.fingerprint,
        "records": rep.records,
        "usable": rep.kept,
        "used": len(drawn),
        "truncated": rep.truncated,
        "skipped": rep.skipped,
    }
    log.info("replay: %d examples from %s mixed with %d task examples", len(drawn), replay.path, len(task))
    return _interleave(task, drawn), report
