"""Run directories that hold full weights (``lora.method: full`` or ``freeze``) instead of an adapter.

Every caller that compares "base" with "fine-tuned" (``chat --compare``, evaluation) switches the
adapter off with ``model.disable_adapter()``. A full-weight model gets the same switch here: inside
the block the base model's values are copied into the tensors that training changed, and the
trained values are put back afterwards. Only the changed tensors are kept twice (for ``freeze``,
the trained layers), and only once the base is first asked for.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..logs import get_logger
from ..modeling import load_model

log = get_logger(__name__)


def holds_full_weights(weights: str | Path) -> bool:
    """True for a run's weights directory with a full model (config.json) rather than an adapter."""
    weights = Path(weights)
    return (weights / "config.json").is_file() and not (weights / "adapter_config.json").is_file()


def load_full_weights(
    weights: str | Path, base_path: str | Path, dtype: str, device: str, trust_remote_code: bool = False
) -> Any:
    """Load the trained model from ``weights``; ``model.disable_adapter()`` switches to ``base_path``."""
    model = load_model(weights, dtype, device, trust_remote_code)
    switch = _BaseSwitch(model, base_path, dtype, trust_remote_code)
    object.__setattr__(model, "disable_adapter", switch.base_weights)  # same call as a PeftModel's
    return model


class _BaseSwitch:
    def __init__(self, model: Any, base_path: str | Path, dtype: str, trust_remote_code: bool = False):
        self.model, self.base_path, self.dtype = model, base_path, dtype
        self.trust_remote_code = trust_remote_code
        self._base: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _changed_base_tensors(self) -> dict[str, Any]:
        import torch

        if self._base is None:
            base = load_model(self.base_path, self.dtype, "cpu", self.trust_remote_code).state_dict()
            own = self.model.state_dict()
            self._base = {n: t for n, t in base.items() if n in own and not torch.equal(own[n].cpu(), t)}
            log.info(
                "base model: %d of %d tensors differ from the fine-tuned ones", len(self._base), len(own)
            )
        return self._base

    @contextlib.contextmanager
    def base_weights(self) -> Iterator[None]:
        import torch

        with self._lock:
            own = self.model.state_dict()
            changed = self._changed_base_tensors()
            tuned = {n: own[n].detach().clone() for n in changed}
            with torch.no_grad():
                for n, t in changed.items():
                    own[n].copy_(t)
            try:
                yield
            finally:
                with torch.no_grad():
                    for n, t in tuned.items():
                        own[n].copy_(t)
