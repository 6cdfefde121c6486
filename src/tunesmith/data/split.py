"""Train/validation split that keeps records with the same prompt on the same side."""

from __future__ import annotations

import random

from .formats import Conversation


def _prompt_key(conv: Conversation) -> str:
    # Records sharing their user turns (e.g. 50 copies of "你是谁？") must not straddle the
    # split, or validation loss measures memorisation instead of generalisation.
    return "\x1f".join(" ".join(m["content"].split()) for m in conv if m["role"] == "user")


def split_records(
    convs: list[Conversation], val_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Split into (train, validation) by whole prompt groups, deterministically for a seed."""
    if val_fraction <= 0 or len(convs) < 2:
        return list(convs), []
    groups: dict[str, list[int]] = {}
    for i, conv in enumerate(convs):
        groups.setdefault(_prompt_key(conv), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(len(convs) * val_fraction))
    val_idx: set[int] = set()
    for key in keys:
        if len(val_idx) >= target:
            break
        if len(val_idx) + len(groups[key]) > target * 1.5 and val_idx:
            continue  # a big duplicate group would overshoot; keep it in training
        val_idx.update(groups[key])
    train = [c for i, c in enumerate(convs) if i not in val_idx]
    val = [c for i, c in enumerate(convs) if i in val_idx]
    if not train:
        raise ValueError("validation split would leave no training records; lower data.val_fraction")
    return train, val
