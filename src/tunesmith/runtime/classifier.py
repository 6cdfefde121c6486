"""A trained classification run, loaded to label texts (``tunesmith classify``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..modeling import load_tokenizer, resolve_source
from ..runcard import RunCard, read_run_card
from .hardware import pick_device


def load_sequence_classifier(
    path: str | Path, classes: list[str], device: str, trust: bool, pad_id: int | None
) -> Any:
    """``AutoModelForSequenceClassification`` over ``path`` with a head for ``classes``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(path),
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        dtype=torch.float32,
        trust_remote_code=trust,
    )
    if model.config.pad_token_id is None:  # decoder models classify at the last non-pad token
        model.config.pad_token_id = pad_id
    return model.to(device)


@dataclass
class Classifier:
    """A trained classifier run, ready to label texts."""

    model: Any
    tokenizer: Any
    labels: list[str]
    card: RunCard

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """``[{"label": best label, "scores": {label: probability}}]``, one per text."""
        import torch

        out = []
        device = next(self.model.parameters()).device
        max_len = self.card.max_length or getattr(self.tokenizer, "model_max_length", None)
        max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else None  # as in training
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=max_len is not None,
                max_length=max_len,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                probs = self.model(**batch).logits.float().softmax(-1).tolist()
            for row in probs:
                best = max(range(len(row)), key=row.__getitem__)
                out.append({"label": self.labels[best], "scores": dict(zip(self.labels, row, strict=True))})
        return out


def load_classifier(run_dir: str | Path, device: str = "auto") -> Classifier:
    """Load a classification run (full weights, or base + adapter with its head).

    Raises:
        RunDirError: the run is unfinished or is not a classifier.
    """
    from peft import PeftModel

    run_dir = Path(run_dir)
    card = read_run_card(run_dir)
    if card.task != "classification":
        raise RunDirError(f"{run_dir} is a {card.task} run, not a classifier; use `tunesmith chat {run_dir}`")
    labels = list(card.data["labels"])
    dev = pick_device(device)
    tokenizer = load_tokenizer(run_dir / card.tokenizer, card.trust_remote_code)
    weights = run_dir / card.adapter
    if (weights / "adapter_config.json").is_file():
        source = resolve_source(card.base_model["source"], card.base_model.get("revision"))
        model = load_sequence_classifier(
            source.path, labels, dev, card.trust_remote_code, tokenizer.pad_token_id
        )
        model = PeftModel.from_pretrained(model, str(weights))
    else:
        model = load_sequence_classifier(weights, labels, dev, card.trust_remote_code, tokenizer.pad_token_id)
    model.eval()
    return Classifier(model, tokenizer, labels, card)
