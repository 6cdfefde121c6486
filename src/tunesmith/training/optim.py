"""Per-parameter learning rates: LoRA+ and differential learning rates by module group.

Each trainable parameter gets a factor on ``train.learning_rate``:

* ``lora.method: loraplus``: LoRA B matrices × ``lora.loraplus_lr_ratio`` (LoRA+, Hayou et al.
  2024; PEFT's ``create_loraplus_optimizer`` does the same, but cannot be combined with the
  factors below, so the groups are built here).
* ``train.lr_multipliers``: ``{regex: factor}`` over parameter names, the first match wins
  (``{embed_tokens: 0.1}``, ``{"layers\\.[0-5]\\.": 0.5}``; 0 freezes).
* ``train.layer_lr_decay`` (layer-wise decay): the last transformer layer learns at the full
  rate, each layer below at ``decay`` times the one above, the input embeddings below layer 0.
  Against forgetting: early layers and embeddings hold the most general features.

The factors become optimizer parameter groups handed to the Trainer through its
``optimizer_cls_and_kwargs`` (so DeepSpeed and resuming keep working); the learning-rate
schedule scales every group alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..logs import get_logger
from .methods import layer_index, num_layers

log = get_logger(__name__)

# input embeddings: Llama/Qwen `embed_tokens`, GPT-2 `wte`/`wpe`, BERT `embeddings.*`
_EMBEDDING = re.compile(r"embed|(?:^|\.)wte\.|(?:^|\.)wpe\.")


def lr_factor_fn(cfg: Config, model: Any) -> Callable[[str], float]:
    """The learning-rate factor of each parameter name under ``cfg`` (the three factors multiply).

    Raises:
        ConfigError: a ``train.lr_multipliers`` pattern matches no trainable parameter (the
            message shows what the names look like).
    """
    ratio = cfg.lora.loraplus_lr_ratio if cfg.lora.method == "loraplus" else None
    patterns = [(re.compile(p), float(f)) for p, f in cfg.train.lr_multipliers.items()]
    decay = cfg.train.layer_lr_decay
    layers = num_layers(model) if decay != 1.0 else 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    unused = [rx.pattern for rx, _ in patterns if not any(rx.search(n) for n in trainable)]
    if unused:
        raise ConfigError(
            f"`train.lr_multipliers` patterns {unused} match no trainable parameter; "
            f"trainable parameter names look like: {', '.join(trainable[:4])}"
        )

    def factor(name: str) -> float:
        f = 1.0
        if ratio and ("lora_B" in name or "lora_embedding_B" in name):
            f *= ratio
        for rx, mult in patterns:
            if rx.search(name):
                f *= mult
                break
        if layers:
            f *= decay ** _depth(name, layers)
        return f

    return factor


def _depth(name: str, layers: int) -> int:
    """How many layers below the top a parameter sits: last layer 0, embeddings ``layers``."""
    idx = layer_index(name)
    if idx is not None:
        return layers - 1 - idx
    return layers if _EMBEDDING.search(name) else 0  # final norm, LM head: the top


def optimizer_spec(
    model: Any, args: Any, factor: Callable[[str], float]
) -> tuple[type, dict[str, Any]] | None:
    """``(optimizer class, kwargs with param groups)`` for the Trainer; None when every factor is 1.

    Weight decay follows the Trainer's own rule (none on biases and norms); the optimizer class
    and its other settings are the ones ``TrainingArguments`` would pick.
    """
    from transformers import Trainer

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    factors = {n: factor(n) for n, _ in named}
    if all(f == 1.0 for f in factors.values()):
        return None
    decay = set(Trainer.get_decay_parameter_names(None, model))  # does not use the Trainer instance
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for n, p in named:
        key = (factors[n], n in decay)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "lr": args.learning_rate * key[0],
                "weight_decay": args.weight_decay if key[1] else 0.0,
            },
        )
        group["params"].append(p)
    summary = {
        f"x{f:g}": sum(len(g["params"]) for (gf, _), g in groups.items() if gf == f) for f, _ in groups
    }
    log.info("learning-rate factors (parameter tensors per factor): %s", summary)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls, {**kwargs, "params": list(groups.values())}


def clamp_warmup(trainer: Any) -> Any:
    """Make ``trainer`` leave at least one decay step after warmup; return it.

    transformers' polynomial schedule divides by the steps after warmup, so a run whose warmup
    takes every step (``train.max_steps=1``, or a handful of records) failed with a
    ZeroDivisionError after its only step.
    """
    create, args = trainer.create_scheduler, trainer.args

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:
        if args.get_warmup_steps(num_training_steps) < num_training_steps:
            return create(num_training_steps, optimizer)
        saved, args.warmup_steps = args.warmup_steps, max(num_training_steps - 1, 0)
        try:
            return create(num_training_steps, optimizer)
        finally:
            args.warmup_steps = saved

    trainer.create_scheduler = create_scheduler
    return trainer
