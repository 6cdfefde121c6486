"""Sampling settings shared by chat, serving and the web UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass
class Sampling:
    """Decoding controls. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.5
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256
    seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sampling:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

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
