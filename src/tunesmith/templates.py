"""Render conversations with the tokenizer's own chat template; label assistant tokens only.

No special-token string is ever written by hand: prompts, answers and the end-of-turn token all
come from the template, so training and inference cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.formats import Conversation
from .errors import TemplateError
from .files import sha256_text
from .logs import get_logger

log = get_logger(__name__)

IGNORE_INDEX = -100

# Templates for models whose tokenizer has none (base models): ``plain`` by default (see
# default_template_name), the others by name with model.chat_template.
_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma's turn markers; Gemma has no system role, so a system prompt opens the first user turn.
GEMMA = (
    _BOS + "{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if message['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ message['content'] + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# A plain layout for any vocabulary: the answer ends with the tokenizer's own end-of-sequence
# token, which a pretrained model already knows how to emit.
PLAIN = (
    _BOS + "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n' }}{% else %}"
    "{{ 'Assistant: ' + message['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML, "gemma": GEMMA, "plain": PLAIN}


def default_template_name(tokenizer: Any) -> str:
    """The builtin template for a tokenizer without one: ``plain``, ending answers with its EOS.

    Measured (bench/persona_quality.py, Gemma 3 270M base, 150 LoRA steps on Zhen Huan records):
    with Gemma's own turn markers the tuned model stopped on 8 % of held-out questions, emitting
    rare tokens near the never-trained ``<end_of_turn>`` instead; with ``plain`` it stopped on
    100 %. LoRA leaves the (tied) embedding rows frozen, so an end token the pretrained model
    never learned to emit stays out of reach, while its own end-of-sequence token is not.
    """
    if not tokenizer.eos_token:
        raise TemplateError(
            "this tokenizer has no chat template and no end-of-sequence token, so an answer could "
            "never end. Set model.chat_template to a .jinja file or Jinja text whose end-of-turn "
            "marker is a token of the model's vocabulary."
        )
    return "plain"


_SENTINEL = "TUNESMITH_SENTINEL_ANSWER"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def resolve_template(tokenizer: Any, override: str | None) -> str:
    """Return the chat template text: the override (builtin name, file or Jinja), the tokenizer's,
    or for a tokenizer without one the builtin ``default_template_name`` picks."""
    if override:
        if override in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[override]
        if "{%" in override or "{{" in override:
            return override
        path = Path(override)
        if path.is_file():
            return path.read_text(encoding="utf-8")
        raise TemplateError(
            f"model.chat_template={override[:80]!r} is not a builtin ({', '.join(BUILTIN_TEMPLATES)}),"
            " an existing file, or Jinja text"
        )
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: use the default one
        template = template.get("default")
    if not template:
        name = default_template_name(tokenizer)
        log.info(
            "the tokenizer has no chat template (a base model?): using the builtin %r template "
            "(model.chat_template picks another)",
            name,
        )
        return BUILTIN_TEMPLATES[name]
    return template


class ChatFormat:
    """A tokenizer plus its chat template, with the end-of-turn token worked out once.

    Args:
        tokenizer: a Hugging Face (fast) tokenizer.
        template: chat template text; defaults to the tokenizer's own.
        eot_token: the end-of-turn token as a run card records it; when None (training), it is
            found by rendering a conversation.
    """

    def __init__(self, tokenizer: Any, template: str | None = None, eot_token: str | None = None):
        self.tokenizer = tokenizer
        self.template = template or resolve_template(tokenizer, None)
        self.fingerprint = sha256_text(self.template)[:16]
        self.eot_token = eot_token or self._detect_eot()
        self.eot_id = tokenizer.convert_tokens_to_ids(self.eot_token)
        if eot_token and (self.eot_id is None or self.eot_id == tokenizer.unk_token_id):
            raise TemplateError(f"end-of-turn token {eot_token!r} is not in this tokenizer's vocabulary")

    def render(self, msgs: Conversation, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            msgs,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _detect_eot(self) -> str:
        """The first special token the template writes after an assistant answer."""
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = self.render(msgs)
        except Exception as e:  # jinja raises many types; the message is what matters
            raise TemplateError(f"the chat template failed to render a conversation: {e}") from e
        at = text.find(_SENTINEL)
        if at < 0:
            raise TemplateError("the chat template drops the assistant's answer")
        suffix = text[at + len(_SENTINEL) :]
        specials = set(self.tokenizer.all_special_tokens) | set(
            getattr(self.tokenizer, "added_tokens_encoder", {})
        )
        ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        for tok in self.tokenizer.convert_ids_to_tokens(ids):
            if tok in specials:
                return tok
        raise TemplateError(
            f"the chat template ends an answer with {suffix!r}, which holds no special token of "
            "this tokenizer, so the model could never learn to stop. Use a template whose "
            "end-of-turn marker is in the vocabulary."
        )

    def assistant_spans(self, msgs: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """Render ``msgs`` and return the text and the character spans of each answer + end token."""
        full = self.render(msgs)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = self.render(msgs[:i], add_generation_prompt=True)
            upto = self.render(msgs[: i + 1])
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise TemplateError(
                    "the chat template renders earlier turns differently once later turns are "
                    "added, so answer tokens cannot be located; use a template without that "
                    "behaviour (model.chat_template)"
                )
            end = upto.rfind(self.eot_token)
            end = end + len(self.eot_token) if end >= len(prefix) else len(upto)
            spans.append((len(prefix), end))
        return full, spans

    def encode(self, msgs: Conversation, max_length: int) -> Example:
        """Token ids and labels; labels are -100 everywhere except answers and their end token."""
        text, spans = self.assistant_spans(msgs)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, _end) in enumerate(offsets):
            if any(s <= start < e for s, e in spans):
                labels[j] = ids[j]
        truncated = len(ids) > max_length
        return Example(ids[:max_length], labels[:max_length], truncated)

    def encode_prompt(self, msgs: Conversation) -> list[int]:
        """Token ids of a conversation followed by the assistant generation prompt."""
        text = self.render(msgs, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class EncodeReport:
    records: int = 0
    kept: int = 0
    truncated: int = 0
    skipped: int = 0
    tokens: int = 0
    label_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def encode_all(
    fmt: ChatFormat, convs: list[Conversation], max_length: int
) -> tuple[list[Example], EncodeReport]:
    """Encode every conversation; count truncated ones and skip those left with no answer tokens."""
    rep = EncodeReport(records=len(convs))
    out = []
    for conv in convs:
        ex = fmt.encode(conv, max_length)
        n_labels = sum(1 for x in ex.labels if x != IGNORE_INDEX)
        if n_labels == 0:
            rep.skipped += 1
            continue
        rep.truncated += ex.truncated
        rep.kept += 1
        rep.tokens += len(ex.input_ids)
        rep.label_tokens += n_labels
        out.append(ex)
    return out, rep
