"""Text classification (``model.task: classification``): fine-tune a sequence classifier on text + label.

The tutorial's BERT case. Data is a .json/.jsonl/.csv file of records with a text field and a
label field (``data.text_field`` / ``data.label_field``, default ``text`` / ``label``) or a Label
Studio JSON export of a single-choice project (read with ``import_label_studio``). Every record
must have both; the split keeps near-duplicate texts on one side and each label in proportion.
The model is ``AutoModelForSequenceClassification`` over ``model.source`` with a new head, trained
in full (``full``/``freeze``) or with a LoRA-family adapter (PEFT ``SEQ_CLS``: the head trains in
full next to the adapter and is saved with it). Validation reports accuracy and macro-F1
(scikit-learn) besides the loss; the run card holds them and the label list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, LoraConfig
from ..data.labelled import Labelled, load_labelled, split_labelled
from ..evaluation.metrics import label_metrics
from ..files import atomic_write_json
from ..logs import get_logger
from ..modeling import load_tokenizer, resolve_source
from ..runcard import RunCard, base_model_record
from ..runtime.classifier import load_sequence_classifier
from ..runtime.hardware import choose_dtype, pick_device, use_threads
from .callbacks import best_model_metrics
from .distributed import barrier, check_world_size, is_main
from .lifecycle import Tracking, begin, data_fingerprint, finish, fit, open_run, training_args
from .methods import apply_method, count_parameters, weights_dir
from .optim import lr_factor_fn, optimizer_spec
from .rundir import RunDir

log = get_logger(__name__)

HEADS = ("classifier", "score")  # BERT-style and decoder-style classification heads
# Trainer evaluation key -> run card metric
_HEADLINE = {"eval_loss": "eval_loss", "eval_accuracy": "accuracy", "eval_macro_f1": "macro_f1"}


@dataclass
class _Encoded:
    items: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0


def _encode(
    tokenizer: Any, data: Labelled, idx: list[int], label2id: dict[str, int], max_len: int
) -> _Encoded:
    out = _Encoded()
    for i in idx:
        enc = tokenizer(data.texts[i], truncation=True, max_length=max_len)
        out.truncated += len(tokenizer(data.texts[i])["input_ids"]) > max_len
        out.items.append({**enc, "labels": label2id[data.labels[i]]})
    return out


class _Items:
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def classification_metrics(pred: Any) -> dict[str, float]:
    """Accuracy and macro-F1 of a Trainer prediction (``compute_metrics``)."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return label_metrics(pred.label_ids, logits.argmax(-1))


def _method_config(model: Any, lcfg: LoraConfig) -> LoraConfig:
    """The classification head always trains (LoRA targets follow ``modeling.lora_targets``)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if lcfg.method == "freeze":
        return dataclasses.replace(
            lcfg, train_modules=[*lcfg.train_modules, *(h for h in HEADS if h in names)]
        )
    return lcfg


def _label_counts(data: Labelled, train: list[int], val: list[int]) -> dict[str, dict[str, int]]:
    counts = {c: {"train": 0, "validation": 0} for c in data.classes}
    for side, idx in (("train", train), ("validation", val)):
        for i in idx:
            counts[data.labels[i]][side] += 1
    return counts


def train_classifier(
    cfg: Config, callbacks: list[Any] | None = None, inputs: list[Any] | None = None
) -> Path:
    """Fine-tune a sequence classifier on ``cfg.data``; return the finished run dir.

    Called by ``run_train`` for ``model.task: classification`` (arguments as there).
    """
    data = load_labelled(cfg.data)  # missing labels fail before anything is written
    fingerprint = data_fingerprint([data.texts, data.labels])
    source = resolve_source(cfg.model.source, cfg.model.revision)  # before any file is touched
    reads = [*(inputs or []), cfg.data.path, cfg.model.source, source.path]
    return open_run(cfg, reads, lambda run: _classify_in(cfg, run, data, fingerprint, source, callbacks))


def _classify_in(
    cfg: Config, run: RunDir, data: Labelled, fingerprint: str, source: Any, callbacks: list[Any] | None
) -> Path:
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    run_dir = run.path
    begin(run, cfg, fingerprint)
    train_idx, val_idx = split_labelled(data, cfg.data.val_fraction, cfg.data.seed)
    check_world_size(len(train_idx))
    device = pick_device(cfg.train.device)
    threads = use_threads(cfg.train.threads)
    compute = choose_dtype(cfg.train.dtype, device, source.path)
    dtype = compute.dtype
    log.info("compute dtype %s (%s); %d CPU threads", dtype, compute.reason, threads)
    args = training_args(cfg, run_dir, device, dtype, bool(val_idx))
    args.prediction_loss_only = False  # evaluation needs the logits for accuracy and F1

    tokenizer = load_tokenizer(source.path, cfg.model.trust_remote_code)
    classes = data.classes
    label2id = {c: i for i, c in enumerate(classes)}
    train_enc = _encode(tokenizer, data, train_idx, label2id, cfg.data.max_length)
    val_enc = _encode(tokenizer, data, val_idx, label2id, cfg.data.max_length)
    data_report = {
        "path": str(cfg.data.path),
        "source": data.source,
        "fingerprint": fingerprint,
        "records": len(data.texts),
        "labels": _label_counts(data, train_idx, val_idx),
        "truncated": {"train": train_enc.truncated, "validation": val_enc.truncated},
        "label_studio": data.import_report,
    }
    if is_main():
        atomic_write_json(run_dir / "data_report.json", data_report)
    barrier()

    set_seed(cfg.train.seed)
    model = load_sequence_classifier(
        source.path, classes, device, cfg.model.trust_remote_code, tokenizer.pad_token_id
    )
    model = apply_method(
        model, _method_config(model, cfg.lora), source.path, cfg.train.gradient_checkpointing, "SEQ_CLS"
    )
    trainable, total = count_parameters(model)
    log.info("classifier over %d labels; trainable parameters %d of %d", len(classes), trainable, total)

    tracking = Tracking(run, cfg, dtype, callbacks)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Items(train_enc.items),
        eval_dataset=_Items(val_enc.items) if val_idx else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics,
        callbacks=tracking.callbacks,
        optimizer_cls_and_kwargs=optimizer_spec(model, args, lr_factor_fn(cfg, model)),
    )

    def before() -> dict[str, Any]:
        measured = trainer.evaluate()
        return {f"{name}_before": measured[k] for k, name in _HEADLINE.items()}

    _, metrics = fit(trainer, run, tracking, before if val_idx else None)
    if val_idx:  # the saved weights (the best ones under early stopping) on the validation split
        final = trainer.evaluate()
        metrics.update({name: final[k] for k, name in _HEADLINE.items()})
        best = best_model_metrics(trainer, run_dir)
        metrics.update({k: v for k, v in best.items() if k != "eval_loss"})
    if not is_main():
        return run_dir
    card = RunCard(
        base_model=base_model_record(source, cfg.model.revision),
        template={},
        system_prompt=None,
        generation={},
        data={
            "path": str(cfg.data.path),
            "fingerprint": fingerprint,
            "source": data.source,
            "labels": classes,
            "text_field": cfg.data.text_field,
            "label_field": cfg.data.label_field,
            "max_length": cfg.data.max_length,
            "train_records": len(train_idx),
            "validation_records": len(val_idx),
        },
        metrics=metrics,
        adapter=weights_dir(cfg.lora.method),
        method=cfg.lora.method,
        task="classification",
        max_length=cfg.data.max_length,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype,
        compute={**compute.as_dict(), "threads": threads},
    )
    finish(run, cfg, model, tokenizer, weights_dir(cfg.lora.method), card)
    log.info("classifier finished: %s (accuracy %s)", run_dir, metrics.get("accuracy"))
    return run_dir
