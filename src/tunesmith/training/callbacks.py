"""Trainer callbacks beyond logging: early stopping on validation loss, and what it leaves behind.

Early stopping is transformers' ``EarlyStoppingCallback``; the Trainer itself tracks the best
evaluation (``metric_for_best_model="eval_loss"``), keeps that checkpoint out of checkpoint
rotation and loads it when training ends (``load_best_model_at_end``, set in ``train.py``), so
the run's saved weights are the best ones, not the last.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import TrainConfig


def early_stopping_callbacks(tcfg: TrainConfig) -> list[Any]:
    """``[EarlyStoppingCallback]`` when ``train.early_stopping_patience`` is set, else ``[]``."""
    if not tcfg.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [
        EarlyStoppingCallback(
            early_stopping_patience=tcfg.early_stopping_patience,
            early_stopping_threshold=tcfg.early_stopping_min_delta,
        )
    ]


def best_model_metrics(trainer: Any, run_dir: Path) -> dict[str, Any]:
    """Run-card metrics of the best checkpoint (when training kept one), else ``{}``.

    Returns:
        ``eval_loss`` (the best one: those are the weights saved), ``best_checkpoint`` (relative
        to the run dir), ``best_step`` and ``stopped_early``.
    """
    state = trainer.state
    if not trainer.args.load_best_model_at_end or not state.best_model_checkpoint:
        return {}
    return {
        "eval_loss": state.best_metric,
        "best_checkpoint": Path(os.path.relpath(state.best_model_checkpoint, run_dir)).as_posix(),
        "best_step": state.best_global_step,
        "stopped_early": state.global_step < state.max_steps,
    }


@contextmanager
def closing_tensorboard(callback: Any) -> Iterator[None]:
    """Close the TensorBoard writer when training fails, before a rollback removes its folder."""
    try:
        yield
    except BaseException:
        if getattr(callback, "tb_writer", None) is not None:
            callback.tb_writer.close()
            callback.tb_writer = None
        raise
