"""Training methods: which weights learn, and how (``lora.method``).

* ``lora`` (default), ``dora`` (weight-decomposed LoRA), ``rslora`` (rank-stabilised scaling
  alpha / sqrt(r)) and ``loraplus`` (B matrices learn ``loraplus_lr_ratio`` times faster, see
  ``optim.py``): PEFT LoRA adapters on ``lora.target_modules``.
* ``qlora``: the same LoRA adapter on a base loaded in 4 bits (NF4) with bitsandbytes; CUDA only.
* ``prompt_tuning`` / ``p_tuning``: PEFT trains ``lora.virtual_tokens`` soft-prompt embeddings
  (p-tuning through a small prompt encoder); the base model is untouched.
* ``full``: every weight trains. ``freeze``: only the last ``lora.train_layers`` transformer
  layers and the modules in ``lora.train_modules``. Both save full weights in ``RUN_DIR/model``
  instead of an adapter (the run card's ``adapter`` field names the directory).

PEFT does the adapter work; only the freeze selection is written here (PEFT has none).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..config import LoraConfig
from ..deps import require
from ..errors import ConfigError
from ..logs import get_logger
from ..modeling import attach_lora, load_model

log = get_logger(__name__)

FULL_WEIGHT_METHODS = ("full", "freeze")
PROMPT_METHODS = ("prompt_tuning", "p_tuning")
LORA_METHODS = ("lora", "dora", "rslora", "loraplus", "qlora")

# `model.layers.3.mlp...` (Llama, Qwen2, Mistral), `transformer.h.3...` (GPT-2), `encoder.layer.3...` (BERT)
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def weights_dir(method: str) -> str:
    """The run-dir subdirectory a method's trained weights are saved in."""
    return "model" if method in FULL_WEIGHT_METHODS else "adapter"


def check_method(lcfg: LoraConfig, device: str) -> None:
    """Fail before anything is written when the method cannot run here.

    Raises:
        ConfigError: QLoRA without a CUDA device. DependencyError: QLoRA without bitsandbytes.
    """
    if lcfg.method != "qlora":
        return
    if device != "cuda":
        raise ConfigError(
            f"`lora.method: qlora` loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
            f"GPU, but this run is on {device}. Use lora.method=lora here (same adapter, full-precision "
            "base), or train on a GPU with train.device=cuda"
        )
    require("bitsandbytes", "qlora", "`lora.method: qlora`")


def load_for_training(path: str | Path, lcfg: LoraConfig, device: str, dtype: str, trust: bool) -> Any:
    """Load the base model as the method needs it: fp32 master weights, or 4-bit for QLoRA."""
    if lcfg.method != "qlora":
        return load_model(path, "float32", device, trust)  # AMP keeps fp32 masters
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    # Each DDP process holds its own copy on its own GPU.
    where = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return AutoModelForCausalLM.from_pretrained(
        str(path), quantization_config=quant, dtype=torch.float32, device_map=where, trust_remote_code=trust
    )


def apply_method(
    model: Any,
    lcfg: LoraConfig,
    source_path: str | Path,
    gradient_checkpointing: bool = False,
    task_type: str = "CAUSAL_LM",
) -> Any:
    """Make the right weights trainable (or attach the adapter) for ``lcfg.method``.

    ``task_type`` is PEFT's: ``CAUSAL_LM``, or ``SEQ_CLS`` for a classifier (whose head then
    trains in full next to the adapter).
    """
    method = lcfg.method
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "freeze":
        return freeze_except(model, lcfg.train_layers, lcfg.train_modules)
    if method in PROMPT_METHODS:
        from peft import get_peft_model

        return get_peft_model(model, _prompt_config(lcfg, model, source_path))
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return attach_lora(
        model,
        lcfg.r,
        lcfg.alpha,
        lcfg.dropout,
        lcfg.target_modules,
        use_dora=method == "dora",
        use_rslora=method == "rslora",
        task_type=task_type,
    )


def _prompt_config(lcfg: LoraConfig, model: Any, source_path: str | Path) -> Any:
    from peft import PromptEncoderConfig, PromptTuningConfig

    n = lcfg.virtual_tokens
    if lcfg.method == "p_tuning":
        return PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, encoder_hidden_size=model.config.hidden_size
        )
    if lcfg.prompt_init:
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=n,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=lcfg.prompt_init,
            tokenizer_name_or_path=str(source_path),
        )
    # Embeddings of random vocabulary tokens start at the scale the model expects (random
    # normal vectors do not, and learn far slower).
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="SAMPLE_VOCAB")


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to (``model.layers.3.mlp.up_proj.weight`` → 3)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def num_layers(model: Any) -> int:
    """Number of transformer layers, from the parameter names (works through PEFT wrappers)."""
    found = {layer_index(n) for n, _ in model.named_parameters()}
    found.discard(None)
    return max(found) + 1 if found else 0


def _in_module(param_name: str, module: str) -> bool:
    return f".{module.strip('.')}." in f".{param_name}."


def _module_listing(names: list[str]) -> str:
    tops = sorted({re.sub(r"\.\d+(\..*)?$", ".N", n.rsplit(".", 1)[0]) for n in names})
    return ", ".join(tops)


def freeze_except(model: Any, last_layers: int | None, modules: list[str]) -> Any:
    """Freeze every weight except the last ``last_layers`` layers and the named ``modules``.

    Raises:
        ConfigError: more layers asked for than the model has, or a module name that matches
            no parameter (the message lists the model's modules).
    """
    named = list(model.named_parameters(remove_duplicate=False))  # tied lm_head shows up by name too
    names = [n for n, _ in named]
    total = num_layers(model)
    problems = []
    if last_layers and last_layers > total:
        problems.append(f"`lora.train_layers` is {last_layers} but the model has {total} layers")
    unmatched = [m for m in modules if not any(_in_module(n, m) for n in names)]
    if unmatched:
        problems.append(
            f"`lora.train_modules` {unmatched} match no parameter; "
            f"the model's modules: {_module_listing(names)}"
        )
    if problems:
        raise ConfigError(problems)
    first = total - (last_layers or 0)
    train = set()
    for n, p in named:
        idx = layer_index(n)
        if (last_layers and idx is not None and idx >= first) or any(_in_module(n, m) for m in modules):
            train.add(id(p))
    for _, p in named:
        p.requires_grad_(id(p) in train)
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
