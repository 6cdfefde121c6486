"""Sampling settings: one definition for the config's ``generation`` section, the run card's
generation defaults, chat, evaluation, serving and the web UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class Sampling:
    """Decoding controls. ``temperature == 0`` means greedy decoding."""

    temperature: float = _help(0.5, "sampling temperature (0 = greedy)")
    top_p: float = _help(0.8, "nucleus sampling probability mass")
    top_k: int = _help(50, "sample among the k most likely tokens (0 disables)")
    repetition_penalty: float = _help(1.1, "penalty > 1 discourages repeating tokens")
    max_new_tokens: int = _help(256, "maximum tokens per answer")
    seed: int | None = _help(None, "sampling seed for reproducible answers")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sampling:
        """Settings from a mapping (a run card's ``generation``).

        Raises:
            ValueError: a key that is not a sampling setting (named, with the known ones).
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; known: {names}")
        return cls(**d)

    def updated(self, **overrides: Any) -> Sampling:
        """A copy with every non-None override applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, stop_ids: list[int], pad_id: int | None) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": stop_ids,
            "pad_token_id": pad_id if pad_id is not None else stop_ids[0],
        }
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw
