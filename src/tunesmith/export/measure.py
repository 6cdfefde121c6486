"""What int8 quantization costs and buys: size, greedy tokens/s and perplexity, float vs int8."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..data import load_records
from ..logs import get_logger
from ..runcard import DEFAULT_MAX_LENGTH
from .checks import Runner, perplexity, tokens_per_s
from .common import dir_size

log = get_logger(__name__)


def eval_examples(
    bot: Any, path: str | None, limit: int, fallback: list[list[dict[str, str]]]
) -> tuple[list[tuple[list[int], list[int]]], str]:
    """(input_ids, labels) pairs to measure perplexity on, and where they came from.

    ``path`` (``--eval-data``, else the run's own data file if it still exists) gives the first
    ``limit`` records; without one, ``fallback`` conversations are used. Each is cut to the run
    card's max length, as in training.
    """
    max_length = bot.card.max_length or DEFAULT_MAX_LENGTH
    convs, origin = fallback, "check prompts with the fine-tuned model's greedy answers"
    if path and Path(path).is_file():
        convs = load_records(path, "auto", bot.card.system_prompt)[:limit]
        origin = f"{path} (first {len(convs)} records)"
    examples = []
    for conv in convs:
        ex = bot.fmt.encode(bot.with_system(conv), max_length)
        examples.append((ex.input_ids, ex.labels))
    return examples, origin


def outlier_layers(model: Any, prompts: list[list[int]], ratio: float | None) -> list[str]:
    """Linear layers whose input has outliers: peak |activation| over mean |activation| above
    ``ratio`` on ``prompts``. Dynamic int8 quantizes each input row with one scale, so a few huge
    values (the "massive activations" of small LLMs, mostly at MLP down-projections) would crush
    every other value to a handful of levels; these layers stay float. ``None``: keep none."""
    import torch

    if ratio is None:
        return []
    stats: dict[str, list[float]] = {}

    def hook(name: str) -> Any:
        def record(module: Any, args: Any, output: Any) -> None:
            x = args[0].detach().abs().float()
            peak, mean = stats.setdefault(name, [0.0, 0.0])
            stats[name] = [max(peak, float(x.max())), max(mean, float(x.mean()))]

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    ]
    try:
        with torch.inference_mode():
            for ids in prompts:
                model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return sorted(n for n, (peak, mean) in stats.items() if peak > ratio * max(mean, 1e-12))


def torch_size(model: Any) -> int:
    """Bytes of the model's serialized state dict (what it holds in memory, near enough)."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def compare_int8(
    kind: str,
    float_runner: Runner,
    int8_runner: Runner,
    sizes: tuple[int, int],
    examples: list[tuple[list[int], list[int]]],
    prompt: list[int],
    new_tokens: int = 32,
) -> dict[str, Any]:
    """Size, speed (interleaved, same process) and perplexity of the float and int8 models."""
    speed = tokens_per_s({"float": float_runner, "int8": int8_runner}, prompt, new_tokens)
    ppl_f, ppl_q = perplexity(float_runner, examples), perplexity(int8_runner, examples)
    result = {
        "method": kind,
        "size_bytes": {"float": sizes[0], "int8": sizes[1]},
        "size_ratio": sizes[1] / sizes[0],
        "tokens_per_s": speed,
        "speedup": speed["int8"] / speed["float"],
        "perplexity": {"float": ppl_f, "int8": ppl_q},
        "perplexity_change_pct": 100 * (ppl_q / ppl_f - 1),
        "greedy_tokens_timed": new_tokens,
    }
    log.info(
        "int8 (%s): size %.2fx, speed %.2fx, perplexity %.3f -> %.3f",
        kind,
        result["size_ratio"],
        result["speedup"],
        ppl_f,
        ppl_q,
    )
    return result


def onnx_sizes(float_file: Path, int8_file: Path) -> tuple[int, int]:
    """On-disk bytes of two ONNX models, external data files included."""
    return dir_size(float_file.parent), dir_size(int8_file.parent)
