"""Load a finished run directory for answering: base model + adapter + the run card's template."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.formats import Conversation
from ..errors import TemplateError
from ..files import sha256_text
from ..generation import Sampling
from ..logs import get_logger
from ..modeling import load_model, load_tokenizer, quantize_int8, resolve_source
from ..runcard import RUN_CARD, RunCard, read_run_card
from ..templates import ChatFormat
from .fullweights import holds_full_weights, load_full_weights
from .hardware import pick_device

log = get_logger(__name__)


@dataclass
class Chatbot:
    """A model ready to answer conversations exactly as it was trained to.

    Attributes:
        model: a PeftModel (adapter on) or the plain base model.
        fmt: the tokenizer and chat template stored in the run dir.
        card: the run card.
        defaults: the sampling defaults stored with the run.
    """

    model: Any
    fmt: ChatFormat
    card: RunCard
    defaults: Sampling
    has_adapter: bool = True

    def with_system(self, msgs: Conversation) -> Conversation:
        """Prepend the run's system prompt unless the conversation has its own."""
        if self.card.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            return [{"role": "system", "content": self.card.system_prompt}, *msgs]
        return list(msgs)

    def stream(
        self, msgs: Conversation, sampling: Sampling | None = None, base: bool = False
    ) -> Iterator[str]:
        """Yield the answer to ``msgs`` piece by piece. ``base=True`` switches the adapter off."""
        import torch
        from transformers import TextIteratorStreamer

        s = sampling or self.defaults
        ids = self.fmt.encode_prompt(self.with_system(msgs))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        tok = self.fmt.tokenizer
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        stop = self.stop_ids()
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=streamer,
            **s.generate_kwargs(stop, tok.pad_token_id),
        )
        if s.seed is not None:
            torch.manual_seed(s.seed)

        def run() -> None:
            self._generate(kwargs, base)

        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                run()
            except BaseException as e:  # re-raised in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        yield from whole_characters(streamer)
        thread.join()
        if errors:
            raise errors[0]

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: the template's end-of-turn token first, then eos."""
        eos = _as_list(getattr(self.fmt.tokenizer, "eos_token_id", None))
        return [self.fmt.eot_id] + [i for i in eos if i != self.fmt.eot_id]

    def _generate(self, kwargs: dict[str, Any], base: bool) -> Any:
        import torch

        if base and self.card.is_export:
            raise _no_base_error(self.card)
        with torch.inference_mode():
            if base and self.has_adapter:
                with self.model.disable_adapter():
                    return self.model.generate(**kwargs)
            return self.model.generate(**kwargs)

    def generate_batch(
        self, convs: list[Conversation], sampling: Sampling | None = None, base: bool = False
    ) -> list[Generation]:
        """Answer several conversations in one left-padded batch.

        Greedy results equal one-at-a-time generation; sampling draws differ by construction.
        """
        import torch

        s = sampling or self.defaults
        tok = self.fmt.tokenizer
        prompts = [self.fmt.encode_prompt(self.with_system(c)) for c in convs]
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.fmt.eot_id
        device = next(self.model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        stop = self.stop_ids()
        out = self._generate(dict(input_ids=ids, attention_mask=mask, **s.generate_kwargs(stop, pad)), base)
        results = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stop), None)
            tokens = row if end is None else row[:end]
            text = tok.decode(tokens, skip_special_tokens=True).rstrip(REPLACEMENT).strip()
            results.append(Generation(text, len(tokens), prompt_tokens=0, stopped=end is not None))
        for r, p in zip(results, prompts, strict=True):
            r.prompt_tokens = len(p)
        return results

    def answer(self, msgs: Conversation, sampling: Sampling | None = None, base: bool = False) -> str:
        return "".join(self.stream(msgs, sampling, base)).strip()


REPLACEMENT = "\ufffd"  # what decoding makes of the first bytes of a character cut off by the limit


def whole_characters(pieces: Iterator[str]) -> Iterator[str]:
    """Pass text pieces on, holding back trailing U+FFFD until what follows shows whether they
    were a character still arriving; an answer cut by the token limit mid-character ends before it."""
    held = ""
    for piece in pieces:
        text = held + piece
        kept = text.rstrip(REPLACEMENT)
        held = text[len(kept) :]
        if kept:
            yield kept


@dataclass
class Generation:
    """One generated answer: its text, token counts, and whether it ended with a stop token
    (False means it ran into ``max_new_tokens``)."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    stopped: bool


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [x]


def _refuse_classifier(run_dir: Path, card: RunCard) -> None:
    if card.task == "classification":
        from ..errors import RunDirError

        raise RunDirError(
            f"{run_dir} holds a text classifier (model.task: classification), not a chat model; "
            f"label texts with `tunesmith classify {run_dir} TEXT` "
            "(or tunesmith.runtime.classifier.load_classifier)"
        )


def load_chatbot(
    run_dir: str | Path, device: str = "auto", dtype: str | None = None, base_only: bool = False
) -> Chatbot:
    """Load base model (+ adapter unless ``base_only``) with the run's tokenizer and template."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    card = read_run_card(run_dir)
    _refuse_classifier(run_dir, card)
    if card.is_export:
        return load_export(run_dir, card, device, dtype, base_only)
    source = resolve_source(card.base_model["source"], card.base_model.get("revision"))
    if source.content_hash != card.base_model.get("content_hash"):
        log.warning(
            "base model %s differs from the one trained on (hash %s, run card %s)",
            source.spec,
            source.content_hash[:12],
            str(card.base_model.get("content_hash"))[:12],
        )
    fmt = run_format(run_dir, card)
    dev = pick_device(device)
    dt = dtype or ("bfloat16" if dev == "cuda" else "float32")
    trust = card.trust_remote_code
    if not base_only and holds_full_weights(run_dir / card.adapter):  # lora.method full / freeze
        model = load_full_weights(run_dir / card.adapter, source.path, dt, dev, trust)
    else:
        model = load_model(source.path, dt, dev, trust)
        if not base_only:
            model = PeftModel.from_pretrained(model, str(run_dir / card.adapter))
    model.eval()
    return Chatbot(model, fmt, card, card.sampling, has_adapter=not base_only)


def _no_base_error(card: RunCard) -> Exception:
    from ..errors import RunDirError

    src = card.export.get("source_run") or "the run directory it was exported from"
    return RunDirError(
        "this is a merged export: the fine-tuning is folded into its weights, so there is no base "
        f"model to switch to. For --base or --compare use {src}."
    )


def load_export(
    export_dir: Path, card: RunCard, device: str = "auto", dtype: str | None = None, base_only: bool = False
) -> Chatbot:
    """Load a directory written by ``tunesmith export``: merged weights, no adapter, no base model.

    An export made with ``--quantize int8`` (and no ONNX) is quantized to int8 here when it runs
    on the CPU, since dynamic quantization is applied at load time.
    """
    if base_only:
        raise _no_base_error(card)
    fmt = run_format(export_dir, card)
    dev = pick_device(device)
    dt = dtype or ("bfloat16" if dev == "cuda" else "float32")
    model = load_model(export_dir, dt, dev, card.trust_remote_code)
    if card.export.get("quantize") == "int8" and dev == "cpu":
        model = quantize_int8(model.float(), card.export.get("int8_float_layers", ()))
    model.eval()
    return Chatbot(model, fmt, card, card.sampling, has_adapter=False)


def read_run(run_dir: str | Path) -> Chatbot:
    """A run's card, tokenizer, template and sampling defaults without loading any weights.

    The returned Chatbot has ``model=None``: it renders prompts and knows the stop tokens (what a
    server with its own engine, e.g. vLLM, needs) but cannot generate.
    """
    run_dir = Path(run_dir)
    card = read_run_card(run_dir)
    _refuse_classifier(run_dir, card)
    return Chatbot(None, run_format(run_dir, card), card, card.sampling)


def run_format(run_dir: str | Path, card: RunCard) -> ChatFormat:
    """The run's tokenizer with the template and end-of-turn token its card records.

    Raises:
        TemplateError: the card's template text does not match its fingerprint, or the tokenizer
            folder holds another template than the one the run was trained with.
    """
    run_dir = Path(run_dir)
    tokenizer = load_tokenizer(run_dir / card.tokenizer, card.trust_remote_code)
    text = card.template.get("text") or tokenizer.chat_template
    recorded = card.template.get("fingerprint")
    fix = (
        "The run was trained with the template the card records; restore the run directory's "
        f"{card.tokenizer}/ and {RUN_CARD} from the same run, or train again"
    )
    if not text or sha256_text(text)[:16] != recorded:
        found = sha256_text(text)[:16] if text else "none"
        raise TemplateError(
            f"{run_dir}: the chat template's fingerprint is {found}, but the run card records "
            f"{recorded}. {fix}"
        )
    own = tokenizer.chat_template
    if own and own != text:
        raise TemplateError(
            f"{run_dir}: the tokenizer's chat template (fingerprint {sha256_text(own)[:16]}) is not the "
            f"one the run was trained with (run card: {recorded}). {fix}"
        )
    return ChatFormat(tokenizer, text, eot_token=card.end_of_turn)
