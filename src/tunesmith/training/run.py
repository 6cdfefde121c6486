"""run_train(cfg): the one entry to training; dispatches by ``model.task``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config


def run_train(cfg: Config, callbacks: list[Any] | None = None, inputs: Sequence[str | Path] = ()) -> Path:
    """Train ``cfg`` into its run directory and return it.

    Args:
        cfg: the validated config.
        callbacks: extra Trainer callbacks (e.g. the pruning of ``tunesmith tune``).
        inputs: other files the run reads (the config file): a directory holding one is never
            replaced by ``train.overwrite``.
    """
    if cfg.model.task == "classification":  # a sequence classifier on text + label data
        from .classifier import train_classifier

        return train_classifier(cfg, callbacks, list(inputs))
    from .lm import train_lm

    return train_lm(cfg, callbacks, inputs)
