"""Several runs' adapters on one base model in memory (``tunesmith serve`` with many runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..logs import get_logger
from ..modeling import load_model, resolve_source
from ..runcard import RunCard
from .chatbot import Chatbot, read_run
from .fullweights import holds_full_weights
from .hardware import pick_device

log = get_logger(__name__)


@dataclass
class AdapterChatbot(Chatbot):
    """A Chatbot over one of several adapters loaded onto one shared base model."""

    adapter_name: str = "default"

    def _generate(self, kwargs: dict[str, Any], base: bool) -> Any:
        if not base:
            self.model.set_adapter(self.adapter_name)
        return super()._generate(kwargs, base)


@dataclass
class AdapterSet:
    """Several run directories' adapters on one base model in memory.

    Attributes:
        model: the PeftModel holding every adapter (PEFT names ``a0``, ``a1``, ... in ``runs`` order).
        bots: one Chatbot per run name, each with its run's template, system prompt and defaults.
        base_source: the base model source, as resolved.
    """

    model: Any
    bots: dict[str, AdapterChatbot]
    base_source: Any


def check_same_base(cards: dict[str, RunCard]) -> str:
    """The content hash all ``cards`` share; RunDirError naming the odd ones out otherwise."""
    hashes = {name: c.base_model.get("content_hash") for name, c in cards.items()}
    first = next(iter(hashes.values()))
    odd = {n: h for n, h in hashes.items() if h != first or not h}
    if odd:
        listing = ", ".join(
            f"{n}: {c.base_model.get('source')} ({str(hashes[n])[:12]})" for n, c in cards.items()
        )
        raise RunDirError(
            f"adapters that share one base model must be trained on the same base model content; "
            f"the run cards name different ones ({listing}). Serve them from separate servers."
        )
    return str(first)


def load_adapter_set(
    runs: dict[str, str | Path], device: str = "auto", dtype: str | None = None
) -> AdapterSet:
    """Load the base model once and every run's adapter onto it.

    Args:
        runs: name → run directory; the first run's base model source is loaded.

    Raises:
        RunDirError: a run is unfinished, or the runs were trained on different base models or
            tokenizer vocabularies.
    """
    from peft import PeftModel

    if not runs:
        raise RunDirError("no run directory given")
    readers = {name: read_run(path) for name, path in runs.items()}
    check_same_base({name: bot.card for name, bot in readers.items()})
    for name, path in runs.items():
        if holds_full_weights(Path(path) / readers[name].card.adapter):
            raise RunDirError(
                f"{path} holds full weights (lora.method {readers[name].card.method}); serve it alone"
            )
    vocab = {name: len(bot.fmt.tokenizer) for name, bot in readers.items()}
    if len(set(vocab.values())) > 1:
        raise RunDirError(f"the runs' tokenizers have different vocabularies ({vocab}); serve them apart")
    first = next(iter(readers.values())).card
    source = resolve_source(first.base_model["source"], first.base_model.get("revision"))
    if source.content_hash != first.base_model.get("content_hash"):
        log.warning("base model %s differs from the one the adapters were trained on", source.spec)
    dev = pick_device(device)
    model = load_model(
        source.path, dtype or ("bfloat16" if dev == "cuda" else "float32"), dev, first.trust_remote_code
    )
    bots: dict[str, AdapterChatbot] = {}
    for i, (name, path) in enumerate(runs.items()):
        adapter_dir = str(Path(path) / readers[name].card.adapter)
        if i == 0:
            model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=f"a{i}")
        else:
            model.load_adapter(adapter_dir, adapter_name=f"a{i}")
        r = readers[name]
        bots[name] = AdapterChatbot(model, r.fmt, r.card, r.defaults, adapter_name=f"a{i}")
    model.eval()
    return AdapterSet(model, bots, source)
