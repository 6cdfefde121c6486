"""Speed levers that change the model, not the loss: frozen weights kept in bf16, faster dropout.

* **frozen_bf16** (``train.frozen_bf16``): under bf16 autocast every linear layer multiplies in
  bf16, so autocast casts each frozen fp32 weight to bf16 on every forward pass — a copy of the
  whole model per micro-batch, kept alive for the backward pass. Storing the frozen linear
  weights (and biases) in bf16 once gives the matrix products exactly the same operands, saves
  those copies and halves the weights' memory. Embeddings, norms and any weight tied to the
  embeddings stay fp32 (autocast does not cast them), and trainable weights (the adapter) keep
  fp32 master copies. Only for LoRA-family adapters whose layers compute ``base(x) + B(A(x))``
  (not DoRA, which also reads the base weight outside the product).
* **fast_dropout** (``train.fast_dropout``): ``nn.Dropout`` draws its mask with ``bernoulli_``,
  which on CPUs costs about twice as much as drawing uniform numbers and comparing them with p.
  :class:`FastDropout` keeps each element with probability 1 - p and scales by 1 / (1 - p), as
  ``nn.Dropout`` does — the same distribution — from ``torch.rand``. LoRA applies dropout to the
  input of every adapted layer, so on a small model the mask draws are a tenth of a step.
"""

from __future__ import annotations

from typing import Any

import torch

from ..logs import get_logger

log = get_logger(__name__)

FROZEN_BF16_METHODS = frozenset({"lora", "rslora", "loraplus"})


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` that saves the boolean mask (1 byte an element) for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class FastDropout(torch.nn.Dropout):
    """``nn.Dropout`` with the mask drawn as ``rand >= p`` (same distribution, cheaper on CPUs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        keep = torch.rand(x.shape, device=x.device, dtype=torch.float32) >= self.p
        return _MaskedScale.apply(x, keep, 1 / (1 - self.p))


def use_fast_dropout(model: Any) -> int:
    """Swap the PEFT LoRA dropout modules of ``model`` for :class:`FastDropout`; return how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, d in list(dropouts.items()):
            if type(d) is torch.nn.Dropout and d.p > 0:
                fast = FastDropout(d.p)
                fast.train(d.training)
                dropouts[name] = fast
                swapped += 1
    return swapped


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def store_frozen_in_bf16(model: Any) -> list[str]:
    """Keep the frozen ``nn.Linear`` weights and biases of ``model`` in bf16; return their names.

    Only for training under bf16 autocast, which would cast them to bf16 for every product anyway.
    Weights shared with the input embeddings (tied LM heads) are left alone. The names are those of
    the modules inside the base model (PEFT's ``get_base_model()``).
    """
    base = _base(model)
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    tied = {id(embeddings.weight)} if embeddings is not None else set()
    names = []
    for name, module in base.named_modules():
        if type(module) is not torch.nn.Linear or module.weight.requires_grad:
            continue
        if id(module.weight) in tied or module.weight.dtype != torch.float32:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
        if module.bias is not None:
            module.bias = torch.nn.Parameter(module.bias.detach().to(torch.bfloat16), requires_grad=False)
        names.append(name)
    if names:
        # The loader maps the checkpoint file and hands out views of it; one view left (the
        # embeddings, a norm) keeps the whole mapping, fp32 linear weights included, resident.
        # Own copies of the rest let the mapping go.
        for module in base.modules():
            for t in [*module._parameters.values(), *module._buffers.values()]:
                if t is not None and t.device.type == "cpu" and t.dtype != torch.bfloat16:
                    t.data = t.data.clone()
    return names


def restore_fp32(model: Any, names: list[str], source: Any) -> None:
    """Put back the fp32 weights of the modules ``store_frozen_in_bf16`` changed, taken from
    ``source`` (a freshly loaded fp32 copy of the base model), before they are used outside
    autocast (merging the adapter into them, say)."""
    base = _base(model)
    for name in names:
        module = base.get_submodule(name)
        original = source.get_submodule(name.replace(".base_layer", ""))
        module.weight = torch.nn.Parameter(original.weight.detach().clone(), requires_grad=False)
        if module.bias is not None:
            module.bias = torch.nn.Parameter(original.bias.detach().clone(), requires_grad=False)
