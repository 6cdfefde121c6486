"""A GGUF export checked in llama.cpp itself (through ``xllamacpp``), not only in transformers.

transformers' GGUF loader reads the tensors back, but only llama.cpp shows what users of the file
will get: its own tokenizer metadata, chat template, end-of-generation tokens and kernels. The
check sends the check prompts as token ids (rendered by tunesmith's template, as every other
backend gets them) and compares llama.cpp's greedy answers with the merged model's, and whether
it stops where the merged model stops: a model that never stops after export is the failure
users of every fine-tuning tool report most.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..logs import get_logger
from ..runtime.chatbot import REPLACEMENT

log = get_logger(__name__)


def available() -> bool:
    try:
        importlib.import_module("xllamacpp")
    except ImportError:
        return False
    return True


def greedy_in_llamacpp(
    path: str | Path, prompts: Sequence[list[int]], max_new: int, threads: int = 1
) -> list[tuple[str, bool]]:
    """llama.cpp's greedy answer to each prompt (token ids) and whether it ended on its own
    (an end-of-generation token) rather than at ``max_new`` tokens."""
    xlc = importlib.import_module("xllamacpp")
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = max(len(p) for p in prompts) + max_new + 8
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    out = []
    for ids in prompts:
        reply = server.handle_completions(
            {
                "prompt": list(ids),
                "n_predict": max_new,
                "temperature": 0,
                "top_k": 1,
                "repeat_penalty": 1.0,
                "cache_prompt": False,
            }
        )
        if "choices" not in reply:
            raise RuntimeError(f"llama.cpp did not answer: {str(reply)[:300]}")
        choice = reply["choices"][0]
        out.append((choice["text"], choice["finish_reason"] == "stop"))
    return out


def llamacpp_check(
    path: str | Path,
    prompts: Sequence[list[int]],
    reference: Sequence[list[int]],
    max_new: int,
    tokenizer: Any,
    threads: int = 1,
) -> dict[str, Any]:
    """Compare llama.cpp's greedy answers with the reference's (token lists, stop token cut off).

    ``passed`` means llama.cpp stops on every prompt the reference stops on; ``same_answers`` is
    the share of answers equal as text (rounding in f16/q8_0 may change a later token).
    """
    got = greedy_in_llamacpp(path, prompts, max_new, threads)
    want = [tokenizer.decode(r, skip_special_tokens=True).rstrip(REPLACEMENT) for r in reference]
    want_stop = [len(r) < max_new for r in reference]
    same = [g.rstrip(REPLACEMENT) == w for (g, _), w in zip(got, want, strict=True)]
    stops_agree = all(s for (_, s), ws in zip(got, want_stop, strict=True) if ws)
    return {
        "runtime": f"llama.cpp via xllamacpp {importlib.metadata.version('xllamacpp')}",
        "same_answers": f"{sum(same)}/{len(same)}",
        "stopped": f"{sum(s for _, s in got)}/{len(got)}",
        "reference_stopped": f"{sum(want_stop)}/{len(want_stop)}",
        "passed": stops_agree,
        "answers": [
            {"llama_cpp": g, "stopped": s, "reference": w} for (g, s), w in zip(got, want, strict=True)
        ],
    }
