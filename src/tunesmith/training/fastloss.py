"""Exact speed levers for causal-LM fine-tuning: no padding and no prompt logits.

Both give the same loss and gradients as the plain computation (tests/test_fastloss.py):

* **unpadded**: no padding token is computed. Where the model supports it, the sequences of a
  micro-batch are packed into one row whose position ids restart at each sequence, and
  transformers' masking turns the restarts into block-diagonal causal attention: each sequence
  sees only itself, exactly as in its own padded row, and the matrix products stay as wide as the
  whole micro-batch. Other models run each sequence on its own. The losses are summed and divided
  by the number of label tokens, exactly as the padded batch would.
* **label logits only**: the LM head is applied only at positions whose next token is a label;
  prompt positions (about two thirds of the tokens in instruction data) never produce logits.
  With a 50k–150k vocabulary the skipped logits are a large share of the step.

Written here because neither transformers nor PEFT offers per-sequence label-only logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
    # Gemma 3 (text) has neither, and scales its embeddings inside embed_tokens, which the fast path
    # calls; Gemma 2 softcaps, and the multimodal Gemma 3 wrapper has no plain lm_head(model(...)).
    return not scaled and getattr(cfg, "model_type", "") not in {"gemma2", "gemma3", "cohere"}


# Decoder families whose transformers implementation builds its attention mask with
# ``masking_utils.create_causal_mask``, which reads restarting position ids (no attention mask, no
# cache) as packed sequences and isolates them. Others run one sequence at a time.
PACKABLE = frozenset(
    {"llama", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "granite", "smollm3", "gemma3_text"}
)


def supports_packing(model: Any) -> bool:
    """True where sequences packed into one row with restarting position ids stay independent."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "model_type", None) not in PACKABLE:
        return False
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return False  # flash-attention kernels take packed input through other arguments
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:  # transformers before packed-sequence masks
        return False
    return True


def _pieces(
    inputs: dict[str, Any], unpadded: bool, pack: bool, multiple: int = 0
) -> list[tuple[Any, Any, Any, Any]]:
    """(input ids, attention mask, position ids, shifted targets) for each forward pass.

    Targets are the labels shifted left by one within each sequence (-100 after its last token),
    so that position ``t`` of a piece predicts ``targets[t]``. A packed row is padded at its end
    to a multiple of ``multiple`` tokens (0: not padded) by a filler sequence of its own (position
    ids restarting at 0, no labels): the real sequences never attend to it and it adds nothing to
    the loss, but the row lengths, and so the shapes of every product, repeat from batch to batch.
    """
    ids, mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"]
    stop = torch.full_like(labels[:, :1], IGNORE_INDEX)
    if mask is None or not unpadded:
        return [(ids, mask, None, torch.cat([labels[:, 1:], stop], dim=1))]
    rows = []
    for row in range(ids.shape[0]):
        keep = mask[row].bool()
        seq, lab = ids[row][keep], labels[row][keep]
        rows.append((seq, torch.cat([lab[1:], stop[0]])))
    if pack and (len(rows) > 1 or multiple > 1):
        fill = -sum(len(seq) for seq, _ in rows) % multiple if multiple > 1 else 0
        if fill:
            rows.append((ids.new_zeros(fill), labels.new_full((fill,), IGNORE_INDEX)))
        positions = torch.cat([torch.arange(len(seq), device=ids.device) for seq, _ in rows])
        packed = torch.cat([seq for seq, _ in rows])[None]
        return [(packed, None, positions[None], torch.cat([t for _, t in rows])[None])]
    return [(seq[None], None, None, t[None]) for seq, t in rows]


def causal_lm_loss(
    model: Any,
    inputs: dict[str, Any],
    num_items: Any = None,
    unpadded: bool = True,
    label_logits_only: bool = True,
    pad_to_multiple_of: int = 0,
) -> Any:
    """Token-level cross-entropy of a causal LM, summed over label tokens / ``num_items``.

    Args:
        model: a causal LM or a PEFT model wrapping one (``supports_fast_loss`` must hold).
        inputs: ``input_ids``, ``attention_mask`` and ``labels`` (-100 = no loss).
        num_items: label-token count to divide by (the whole accumulated batch, as the Trainer
            passes it); defaults to this batch's label tokens.
        pad_to_multiple_of: pad packed rows, and the label rows of the fused loss, to a multiple
            of this many tokens so that shapes repeat (0: off). Padding never changes the loss.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total = None
    pack = unpadded and supports_packing(base)
    for ids, mask, positions, targets in _pieces(inputs, unpadded, pack, pad_to_multiple_of):
        kw = {"position_ids": positions, "use_cache": False} if positions is not None else {}
        hidden = base.model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
        keep = targets != IGNORE_INDEX
        head = base.lm_head
        if label_logits_only and _fusable(head):
            loss = label_cross_entropy(hidden[keep], head.weight, targets[keep], pad_to_multiple_of)
            total = loss if total is None else total + loss
            continue
        if label_logits_only:
            logits = head(hidden[keep])
        else:
            logits = base.lm_head(hidden)[keep]
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        total = loss if total is None else total + loss
    if num_items is None:
        num_items = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    return total / num_items


def _fusable(head: Any) -> bool:
    """A frozen, bias-free linear LM head. A trained head (full fine-tuning) takes the plain path,
    which also gives its gradient."""
    return type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad


# Rows of logits computed at once: bounds the fp32 logits in flight to about 32 MB.
CE_CHUNK_ELEMENTS = 8 * 1024 * 1024


def label_cross_entropy(hidden: Any, weight: Any, targets: Any, multiple: int = 0) -> Any:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, logits never kept.

    The logits are computed a chunk of rows at a time; with gradients enabled, each chunk's
    gradient with respect to ``hidden`` ((softmax - one-hot) @ weight) is computed at once and only
    that (rows x hidden size) is kept for the backward pass, instead of two (rows x vocabulary)
    logit tensors. Under autocast the products run in its dtype, as ``nn.Linear`` would; the loss
    is computed in fp32 (as ``logits.float()`` would). ``weight`` must be frozen.

    With ``multiple`` > 1 the rows are padded with zero rows, which count for nothing, to a multiple
    of it, and the chunks are multiples of it too, so the products' shapes repeat across calls.
    """
    return _LabelCE.apply(hidden, weight, targets, multiple)


class _LabelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, multiple: int) -> Any:
        dt = hidden.dtype
        if torch.is_autocast_enabled(hidden.device.type):
            dt = torch.get_autocast_dtype(hidden.device.type)
        h, w = hidden.to(dt), weight.to(dt)
        need_grad = ctx.needs_input_grad[0]
        n = h.shape[0]
        rows = max(1, CE_CHUNK_ELEMENTS // w.shape[0])
        if multiple > 1:
            rows = max(multiple, rows // multiple * multiple)
            if n % multiple:
                h = torch.cat([h, h.new_zeros(multiple - n % multiple, h.shape[1])])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grads = []
        for start in range(0, n, rows):
            hc, tc = h[start : start + rows], targets[start : start + rows]
            real = len(tc)  # the rows past it are padding
            logits = (hc @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse[:real] - logits[:real].gather(1, tc[:, None]).squeeze(1)).sum()
            if need_grad:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(real, device=tc.device), tc] -= 1
                # the padding rows go through the product too (so its shape repeats), then are cut
                grads.append((probs.to(dt) @ w)[:real].to(hidden.dtype))
        if need_grad:
            ctx.save_for_backward(torch.cat(grads) if grads else hidden.new_zeros(hidden.shape))
        return total

    @staticmethod
    def backward(ctx: Any, grad: Any) -> tuple[Any, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad.to(grad_hidden.dtype), None, None, None


def make_trainer(unpadded: bool, label_logits_only: bool, pad_to_multiple_of: int = 0, **kwargs: Any) -> Any:
    """A transformers Trainer whose loss uses the exact levers above where the model allows."""
    from transformers import Trainer

    class TunesmithTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if not (unpadded or label_logits_only) or not supports_fast_loss(model):
                self.loss_is_scaled_for_ga = None  # let the Trainer decide, as for its own loss
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Normalised by the label count of the whole accumulated batch, like HF's own loss.
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            # The fast path calls the model's submodules, past the forward that accelerate wraps in
            # autocast, so it enters the mixed-precision context itself.
            with self.accelerator.autocast():
                loss = causal_lm_loss(
                    model, inputs, num_items_in_batch, unpadded, label_logits_only, pad_to_multiple_of
                )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # The count spans every process (as the Trainer gathers it); scale back as HF's own
                # loss does, so multi-process losses match a single process.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

    return TunesmithTrainer(**kwargs)
