"""Perplexity on answer tokens only, labelled exactly as in training (``ChatFormat.encode``)."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

from ..data.formats import Conversation
from ..runtime.chatbot import Chatbot
from ..templates import IGNORE_INDEX, Example


def adapter_off(bot: Chatbot, base: bool) -> contextlib.AbstractContextManager:
    """Switch the adapter off inside the block when ``base`` is asked for (as Chatbot._generate)."""
    return bot.model.disable_adapter() if base and bot.has_adapter else contextlib.nullcontext()


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _batch_nll(bot: Chatbot, batch: list[Example], base: bool) -> tuple[float, int]:
    """Summed negative log-likelihood and number of label tokens of one left-padded batch."""
    import torch
    import torch.nn.functional as F

    width = max(len(e.input_ids) for e in batch)
    tok = bot.fmt.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else bot.fmt.eot_id
    device = next(bot.model.parameters()).device
    lead = [width - len(e.input_ids) for e in batch]
    ids = torch.tensor([[pad] * n + e.input_ids for n, e in zip(lead, batch, strict=True)], device=device)
    labels = torch.tensor([[IGNORE_INDEX] * n + e.labels for n, e in zip(lead, batch, strict=True)])
    mask = torch.tensor([[0] * n + [1] * len(e.input_ids) for n, e in zip(lead, batch, strict=True)])
    # Left padding lines every answer up at the end, so only the last `keep` positions need logits:
    # the prompt (often most of the tokens) costs no LM-head work.
    first = min(
        n + next(i for i, t in enumerate(e.labels) if t != IGNORE_INDEX)
        for n, e in zip(lead, batch, strict=True)
    )
    keep = min(width, width - first + 1)
    extra = {"logits_to_keep": keep} if _accepts_logits_to_keep(bot.model) else {}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), adapter_off(bot, base):
        out = bot.model(
            input_ids=ids, attention_mask=mask.to(device), position_ids=positions.to(device), **extra
        )
    logits = out.logits[:, -keep:-1]  # position p predicts the token at p + 1
    target = labels[:, width - keep + 1 :].to(logits.device)
    # One row at a time: the float32 log-softmax copy is then answer length x vocabulary, not B times it.
    nll = sum(
        float(F.cross_entropy(lg.float(), t, reduction="sum")) for lg, t in zip(logits, target, strict=True)
    )
    return nll, int((target != IGNORE_INDEX).sum())


def answer_perplexity(
    bot: Chatbot,
    convs: list[Conversation],
    base: bool = False,
    max_length: int = 384,
    batch_size: int = 8,
    system_prompt: bool = True,
) -> dict[str, Any]:
    """Token-weighted perplexity of the answers in ``convs`` (system prompt added as in chat).

    Args:
        bot: the loaded run.
        convs: conversations ending with an assistant answer.
        base: switch the adapter off (the base model).
        max_length: truncate like training (``data.max_length``); truncations are counted.
        batch_size: conversations per forward pass.
        system_prompt: add the run's system prompt (False: the conversations as they are, as a
            general user would send them).

    Returns:
        perplexity, mean ``nll`` per answer token, ``answer_tokens``, ``records`` scored,
        ``truncated`` and ``skipped`` (no answer token left after truncation) counts.
    """
    examples = [bot.fmt.encode(bot.with_system(c) if system_prompt else c, max_length) for c in convs]
    scored = [e for e in examples if any(t != IGNORE_INDEX for t in e.labels)]
    scored.sort(key=lambda e: len(e.input_ids))  # similar lengths together: less padding
    nll, tokens = 0.0, 0
    for i in range(0, len(scored), batch_size):
        part_nll, part_tokens = _batch_nll(bot, scored[i : i + batch_size], base)
        nll, tokens = nll + part_nll, tokens + part_tokens
    mean = nll / tokens if tokens else None  # None, not NaN: metrics.json must stay valid JSON
    return {
        "perplexity": math.exp(min(mean, 50)) if mean is not None else None,
        "nll": mean,
        "answer_tokens": tokens,
        "records": len(scored),
        "truncated": sum(e.truncated for e in examples),
        "skipped": len(examples) - len(scored),
    }
