"""Batched answering for evaluation, and the decoding-settings grid of ``--sweep``."""

from __future__ import annotations

import difflib
import itertools
import sys
from typing import Any

from ..data.formats import Conversation
from ..errors import ConfigError
from ..generation import Sampling
from ..logs import get_logger
from ..runtime.chatbot import Chatbot, Generation

log = get_logger(__name__)


def generate_all(
    bot: Chatbot,
    prompts: list[Conversation],
    sampling: Sampling,
    base: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "answers",
) -> list[Generation]:
    """Answer every prompt, ``batch_size`` at a time (left-padded ``Chatbot.generate_batch``).

    Prompts are batched in order of length, so a batch wastes little on padding, and the
    answers come back in the order of ``prompts``. A progress bar goes to stderr when it is a
    terminal (``progress=False`` hides it).
    """
    from tqdm.auto import tqdm

    lengths = [len(bot.fmt.encode_prompt(bot.with_system(p))) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, file=sys.stderr, disable=None if progress else True)
    with bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, gen in zip(
                chunk, bot.generate_batch([prompts[i] for i in chunk], sampling, base), strict=True
            ):
                out[i] = gen
            bar.update(len(chunk))
    log.info("%s: %d prompts answered in batches of %d", desc, len(prompts), batch_size)
    return out  # type: ignore[return-value]  # every slot is filled above


# --------------------------------------------------------------------------------------------
# --sweep: the Cartesian product of the values given per decoding setting.

SWEEP_KEYS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "repetition_penalty": float,
    "max_new_tokens": int,
}
DEFAULT_SWEEP = ["temperature=0,0.7", "repetition_penalty=1.0,1.1,1.3"]
_RANGES = {
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 0, ">= 0"),
    "repetition_penalty": (lambda v: v > 0, "> 0"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
}


def _values(key: str, text: str, problems: list[str]) -> list[Any]:
    values = []
    for raw in (t.strip() for t in text.split(",")):
        try:
            v = SWEEP_KEYS[key](raw)
        except ValueError:
            problems.append(
                f"--sweep {key}: {raw!r} is not {'an integer' if SWEEP_KEYS[key] is int else 'a number'}"
            )
            continue
        ok, rule = _RANGES[key]
        if not ok(v):
            problems.append(f"--sweep {key}: {raw} must be {rule}")
        values.append(v)
    return values


def parse_sweep(specs: list[str] | None = None) -> list[dict[str, Any]]:
    """Turn ``["temperature=0,0.5", "repetition_penalty=1.0,1.3"]`` into every combination.

    Args:
        specs: ``key=v1,v2,...`` strings over ``SWEEP_KEYS``; empty or None means ``DEFAULT_SWEEP``.

    Returns:
        One dict of overrides per setting, e.g. ``{"temperature": 0.0, "repetition_penalty": 1.0}``.

    Raises:
        ConfigError: every unknown key, duplicate key and bad value together.
    """
    problems: list[str] = []
    grid: dict[str, list[Any]] = {}
    for spec in specs or DEFAULT_SWEEP:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not text.strip():
            problems.append(f"--sweep {spec!r} must look like key=v1,v2 (keys: {', '.join(SWEEP_KEYS)})")
        elif key not in SWEEP_KEYS:
            close = difflib.get_close_matches(key, list(SWEEP_KEYS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; choose from {', '.join(SWEEP_KEYS)}"
            problems.append(f"--sweep: unknown setting {key!r}{hint}")
        elif key in grid:
            problems.append(f"--sweep: {key} given twice; list all its values once: {key}=v1,v2")
        else:
            grid[key] = _values(key, text, problems)
    if problems:
        raise ConfigError(problems, "--sweep")
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
