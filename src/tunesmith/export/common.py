"""Pieces every export format shares: the error type, lazy optional imports, the fixed check batch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import deps

# Prompts of the fixed check batch: short, mixed languages, one multi-turn. The run's system prompt
# and chat template are applied to them exactly as chat/serve would.
CHECK_PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "你是谁？"}],
    [{"role": "user", "content": "Hello! Who are you, and what can you do?"}],
    [{"role": "user", "content": "皇上驾到！"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, please."},
    ],
]


def require(module: str, fmt: str) -> ModuleType:
    """Import an optional module an export format uses, or fail with what to install."""
    return deps.require(module, "export", f"--format {fmt}")


@dataclass
class CheckResult:
    """One comparison of an exported model against the model it came from.

    Attributes:
        name: what was checked ("merged", "gguf-f16", "onnx", ...).
        max_abs_diff: the largest absolute logit difference over the batch's real tokens.
        rel_diff: ``max_abs_diff`` divided by ``max(1, max |reference logit|)``.
        top1_agreement: share of positions where both models rank the same next token first.
        greedy_equal: how many of the greedy answers are identical (of ``greedy_total``).
        tolerance: the limit ``rel_diff`` was held to (None: reported only).
        passed: whether the check held.
    """

    name: str
    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    greedy_equal: int = 0
    greedy_total: int = 0
    tolerance: float | None = None
    passed: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dir_size(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for a while: the ONNX tools log one INFO line per tensor."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
