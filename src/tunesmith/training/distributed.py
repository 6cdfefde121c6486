"""Multi-process training (DDP under ``torchrun`` / ``accelerate launch``, DeepSpeed): who writes, and
what is refused before anything starts.

The Trainer (through accelerate) sets up the process group from the launcher's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), shards each global batch over the processes and
averages the gradients; ``tunesmith train`` itself only has to let one process (rank 0) write the
run directory and make the others wait for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..deps import require
from ..errors import ConfigError


def world_size() -> int:
    """Number of training processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True in the process that writes the run directory (global rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process or before the process group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_world_size(train_examples: int) -> None:
    """Every process needs at least one training example.

    Raises:
        ConfigError: more processes than training examples.
    """
    n = world_size()
    if train_examples < n:
        raise ConfigError(
            f"{train_examples} training example(s) cannot be spread over {n} processes; launch at most "
            f"{max(train_examples, 1)} (torchrun --nproc_per_node {max(train_examples, 1)}) or add data"
        )


def _deepspeed_config(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    path = Path(str(value))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"`train.trainer_args.deepspeed`: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"`train.trainer_args.deepspeed`: {path} is not valid JSON: {e}") from None


def check_deepspeed(trainer_args: dict[str, Any], device: str) -> None:
    """Refuse DeepSpeed set-ups that would fail late: no GPU, not installed, or ZeRO stage 3.

    Raises:
        ConfigError: no CUDA device, unreadable config, or ZeRO-3. DependencyError: not installed.
    """
    if "deepspeed" not in trainer_args:
        return
    cfg = _deepspeed_config(trainer_args["deepspeed"])
    if device != "cuda":
        raise ConfigError(
            "`train.trainer_args.deepspeed` needs CUDA GPUs; on CPU drop it (plain DDP under torchrun "
            "works on CPU too)"
        )
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO stage 3 partitions the weights across GPUs and tunesmith's final save does "
            "not gather them; use stage 1 or 2 (examples/deepspeed_zero2.json)"
        )
    require("deepspeed", None, "`train.trainer_args.deepspeed`")


def prepare_for_training_after_evaluate(trainer: Any) -> None:
    """Let ``trainer.train()`` wrap the model in DDP after a ``trainer.evaluate()`` that ran first.

    transformers 5.24 / accelerate 1.15: ``Trainer.evaluate()`` before any training prepares the
    model in evaluation mode and marks it ``_is_accelerate_prepared``; ``train()`` then skips the
    DDP wrap, and every process trains on its own shard with **no gradient averaging** (the
    logged loss is also off by the world size). Forgetting that preparation restores the normal
    path. tests/test_distributed.py compares the loss curve with a single process and catches a
    regression.
    """
    if world_size() <= 1:
        return
    model = trainer.model
    if getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        models = trainer.accelerator._models
        models[:] = [m for m in models if m is not model]
