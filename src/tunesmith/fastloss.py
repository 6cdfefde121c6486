"""Exact speed levers for causal-LM fine-tuning: no padding and no prompt logits.

Both give the same loss and gradients as the plain computation (tests/test_fastloss.py):

* **unpadded**: each sequence of a micro-batch runs on its own, without padding tokens; the
  losses are summed and divided by the number of label tokens, exactly as the padded batch would.
* **label logits only**: the LM head is applied only at positions whose next token is a label;
  prompt positions (about two thirds of the tokens in instruction data) never produce logits.
  With a 50k–150k vocabulary the skipped logits are a large share of the step.

Written here because neither transformers nor PEFT offers per-sequence label-only logits.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def supports_fast_loss(model: Any) -> bool:
    """True for decoder models whose logits are plain ``lm_head(hidden)`` (Llama, Qwen2, Mistral…)."""
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False  # PeftModel.forward prepends the virtual tokens; the fast path would skip them
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # A DDP/DeepSpeed wrapper has no config, so it lands here: the fast path calls submodules
    # directly, past the wrapper's forward, which would skip its gradient synchronisation.
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(base, "lm_head") or not hasattr(base, "model"):
        return False
    # Softcapped or scaled logits would need the model's own post-processing.
    scaled = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
    return not scaled and getattr(cfg, "model_type", "") not in {"gemma2", "gemma3", "gemma3_text", "cohere"}


def _pieces(inputs: dict[str, Any], unpadded: bool) -> list[tuple[Any, Any, Any]]:
    ids, mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"]
    if mask is None or not unpadded:
        return [(ids, mask, labels)]
    out = []
    for row in range(ids.shape[0]):
        keep = mask[row].bool()
        out.append((ids[row][keep][None], None, labels[row][keep][None]))
    return out


def causal_lm_loss(
    model: Any,
    inputs: dict[str, Any],
    num_items: Any = None,
    unpadded: bool = True,
    label_logits_only: bool = True,
) -> Any:
    """Token-level cross-entropy of a causal LM, summed over label tokens / ``num_items``.

    Args:
        model: a causal LM or a PEFT model wrapping one (``supports_fast_loss`` must hold).
        inputs: ``input_ids``, ``attention_mask`` and ``labels`` (-100 = no loss).
        num_items: label-token count to divide by (the whole accumulated batch, as the Trainer
            passes it); defaults to this batch's label tokens.
    """
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = None
    for ids, mask, labels in _pieces(inputs, unpadded):
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if label_logits_only:
            logits = base.lm_head(hidden[keep])
        else:
            logits = base.lm_head(hidden)[keep]
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        total = loss if total is None else total + loss
    if num_items is None:
        num_items = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    return total / num_items


def make_trainer(unpadded: bool, label_logits_only: bool, **kwargs: Any) -> Any:
    """A transformers Trainer whose loss uses the exact levers above where the model allows."""
    from transformers import Trainer

    class TunesmithTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if not (unpadded or label_logits_only) or not supports_fast_loss(model):
                self.loss_is_scaled_for_ga = None  # let the Trainer decide, as for its own loss
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Normalised by the label count of the whole accumulated batch, like HF's own loss.
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            loss = causal_lm_loss(model, inputs, num_items_in_batch, unpadded, label_logits_only)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # The count spans every process (as the Trainer gathers it); scale back as HF's own
                # loss does, so multi-process losses match a single process.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return TunesmithTrainer(**kwargs)
