"""Compare an exported model with the one it came from: logits, greedy answers, perplexity, speed.

Every backend (PyTorch, a GGUF file loaded back, ONNX Runtime) is wrapped as a ``Runner`` with two
methods, so one comparison serves them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..templates import IGNORE_INDEX
from .common import CheckResult


class Runner(Protocol):
    def logits(self, ids: list[int]) -> Any:
        """Next-token logits at every position of ``ids``: a float32 numpy array [len(ids), vocab]."""

    def greedy(self, ids: list[int], max_new: int, stop: Sequence[int]) -> list[int]:
        """Greedy continuation (no repetition penalty), stopping before a stop id or at ``max_new``."""


class TorchRunner:
    """A transformers causal LM (plain, PEFT-wrapped, or dynamically quantized)."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device

    def logits(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device))
        return out.logits[0].float().cpu().numpy()

    def greedy(self, ids: list[int], max_new: int, stop: Sequence[int]) -> list[int]:
        import torch

        input_ids = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                min_new_tokens=0 if stop else max_new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,
                eos_token_id=list(stop) or None,
                pad_token_id=stop[0] if stop else 0,
            )
        return _cut(out[0, len(ids) :].tolist(), stop)


def _cut(tokens: list[int], stop: Sequence[int]) -> list[int]:
    end = next((i for i, t in enumerate(tokens) if t in stop), None)
    return tokens if end is None else tokens[:end]


def reference_outputs(ref: Runner, prompts: list[list[int]], stop: Sequence[int], max_new: int) -> dict:
    """The reference model's logits and greedy answers on the check batch, computed once."""
    return {
        "logits": [ref.logits(p) for p in prompts],
        "greedy": [ref.greedy(p, max_new, stop) for p in prompts],
        "max_new": max_new,
    }


def compare(
    name: str,
    refs: dict[str, Any],
    got: Runner,
    prompts: list[list[int]],
    stop: Sequence[int],
    *,
    tolerance: float | None,
    require_greedy: bool = True,
    min_top1: float | None = None,
) -> CheckResult:
    """Logits and greedy answers of ``got`` against the reference outputs ``refs``.

    Passes when the relative logit difference is within ``tolerance`` (if given), every greedy
    answer is identical (if ``require_greedy``), and the top-1 agreement is at least ``min_top1``
    (if given; for lossy formats, where a few flipped near-ties are expected).
    """
    import numpy as np

    diff, scale, agree, total = 0.0, 1.0, 0, 0
    for p, a in zip(prompts, refs["logits"], strict=True):
        b = got.logits(p)
        diff = max(diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(a).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(p)
    answers = [got.greedy(p, refs["max_new"], stop) for p in prompts]
    equal = sum(x == y for x, y in zip(answers, refs["greedy"], strict=True))
    rel, top1 = diff / scale, agree / total
    passed = (
        (tolerance is None or rel <= tolerance)
        and (not require_greedy or equal == len(prompts))
        and (min_top1 is None or top1 >= min_top1)
    )
    return CheckResult(
        name=name,
        max_abs_diff=diff,
        rel_diff=rel,
        top1_agreement=top1,
        greedy_equal=equal,
        greedy_total=len(prompts),
        tolerance=tolerance,
        passed=passed,
        extra={"greedy_required": require_greedy, "min_top1": min_top1},
    )


def perplexity(runner: Runner, examples: list[tuple[list[int], list[int]]]) -> float:
    """Perplexity over the labelled (assistant) tokens of ``(input_ids, labels)`` examples."""
    import numpy as np

    nll, count = 0.0, 0
    for ids, labels in examples:
        logits = runner.logits(ids)[:-1].astype(np.float64)
        target = np.asarray(labels[1:])
        keep = target != IGNORE_INDEX
        if not keep.any():
            continue
        rows = logits[keep]
        top = rows.max(-1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(rows - top).sum(-1))
        nll += float((logz - rows[np.arange(len(rows)), target[keep]]).sum())
        count += int(keep.sum())
    return math.exp(nll / max(count, 1))


def tokens_per_s(runners: dict[str, Runner], prompt: list[int], new_tokens: int, rounds: int = 2) -> dict:
    """Greedy decoding speed of each runner, interleaved and best-of-``rounds`` so that the
    ratio between them holds on a busy machine."""
    best = dict.fromkeys(runners, math.inf)
    for _ in range(rounds):
        for name, r in runners.items():
            start = time.perf_counter()
            r.greedy(prompt, new_tokens, stop=())
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: new_tokens / s for name, s in best.items()}
