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

from .config import DEFAULT_LORA_TARGETS, Config, DataConfig, LoraConfig, dump_config
from .data.convert import import_label_studio
from .data.formats import check_raw_record, read_raw
from .data.split import leak_groups, split_indices, take
from .distributed import (
    barrier,
    check_world_size,
    is_main,
    prepare_for_training_after_evaluate,
)
from .errors import DatasetError, RunDirError
from .files import atomic_write_json, storage_errors
from .logs import get_logger
from .methods import LORA_METHODS, apply_method, count_parameters, weights_dir
from .modeling import load_tokenizer, pick_device, pick_dtype, resolve_source
from .optim import clamp_warmup, lr_factor_fn, optimizer_spec
from .runcard import RunCard, base_model_record, read_run_card, write_run_card
from .rundir import RunDir, check_data_unchanged, prepare_run_dir, started_callback

log = get_logger(__name__)

HEADS = ("classifier", "score")  # BERT-style and decoder-style classification heads
# Trainer evaluation key -> run card metric
_HEADLINE = {"eval_loss": "eval_loss", "eval_accuracy": "accuracy", "eval_macro_f1": "macro_f1"}


@dataclass
class Labelled:
    """Classification records: parallel texts and (string) labels, and where they came from."""

    texts: list[str]
    labels: list[str]
    source: str = "file"  # or "label-studio"
    import_report: dict[str, Any] | None = None

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _is_label_studio(rec: Any) -> bool:
    return isinstance(rec, dict) and "data" in rec and "annotations" in rec


def _missing(value: Any) -> bool:
    return value is None or isinstance(value, dict | list) or (isinstance(value, str) and not value.strip())


def load_labelled(dcfg: DataConfig) -> Labelled:
    """Read and check classification data before anything else runs.

    Raises:
        DatasetError: a record without text or label (file, record index, line, fields found),
            fewer than two labels, or a Label Studio export without single-choice answers.
    """
    path = Path(dcfg.path)
    raw = read_raw(path)
    text_f, label_f, source, report = dcfg.text_field, dcfg.label_field, "file", None
    if raw and _is_label_studio(raw[0][1]):
        records, report = import_label_studio(path, mode="classification")
        raw, text_f, label_f, source = [(None, r) for r in records], "text", "label", "label-studio"
    texts, labels = [], []
    for i, (lineno, rec) in enumerate(raw):
        check_raw_record(rec, path, i, lineno)
        where = f" (line {lineno}); fields found: {', '.join(map(str, rec))}"
        if _missing(rec.get(text_f)) or not isinstance(rec.get(text_f), str):
            raise DatasetError(
                f"no text: field {text_f!r} is missing or empty{where}. Set data.text_field to the field "
                "holding the text",
                str(path),
                i,
            )
        if _missing(rec.get(label_f)):
            raise DatasetError(
                f"no label: field {label_f!r} is missing or empty{where}. Classification needs a label "
                "on every record: add it, drop the record, or set data.label_field to the field holding it",
                str(path),
                i,
            )
        texts.append(rec[text_f])
        labels.append(str(rec[label_f]).strip())
    keep = take(list(range(len(texts))), dcfg.limit, dcfg.sample, dcfg.seed)
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if len(set(labels)) < 2:
        found = f"only {sorted(set(labels))}" if labels else "no records"
        raise DatasetError(f"classification needs at least two different labels; found {found}", str(path))
    return Labelled(texts, labels, source, report)


def split_labelled(data: Labelled, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, validation): equal or near-duplicate texts together, labels in proportion."""
    groups = leak_groups(data.texts, data.texts)
    return split_indices(groups, val_fraction, seed, strata=data.labels)


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


def label_metrics(truth: Any, guess: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (over the labels present in either) of predicted against true labels."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, guess)),
        "macro_f1": float(f1_score(truth, guess, average="macro", zero_division=0)),
    }


def _load_model(path: str | Path, classes: list[str], device: str, trust: bool, pad_id: int | None) -> Any:
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


def _method_config(model: Any, lcfg: LoraConfig) -> LoraConfig:
    """The head always trains; LoRA's default (Llama-style) targets become PEFT's for this model."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if lcfg.method == "freeze":
        return dataclasses.replace(
            lcfg, train_modules=[*lcfg.train_modules, *(h for h in HEADS if h in names)]
        )
    if (
        lcfg.method in LORA_METHODS
        and lcfg.target_modules == DEFAULT_LORA_TARGETS
        and not names & set(DEFAULT_LORA_TARGETS)
    ):
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

        targets = PEFT_TARGETS.get(model.config.model_type)
        if targets:
            log.info(
                "lora.target_modules: %s has no q_proj/v_proj...; using %s", model.config.model_type, targets
            )
            return dataclasses.replace(lcfg, target_modules=list(targets))
    return lcfg


def _label_counts(data: Labelled, train: list[int], val: list[int]) -> dict[str, dict[str, int]]:
    counts = {c: {"train": 0, "validation": 0} for c in data.classes}
    for side, idx in (("train", train), ("validation", val)):
        for i in idx:
            counts[data.labels[i]][side] += 1
    return counts


def run_classify(cfg: Config, callbacks: list[Any] | None = None, inputs: list[Any] | None = None) -> Path:
    """Fine-tune a sequence classifier on ``cfg.data``; return the finished run dir.

    Called by ``run_train`` for ``model.task: classification`` (``inputs`` as there).
    """
    from .train import data_fingerprint  # the chat path's run-dir handling, shared

    data = load_labelled(cfg.data)  # missing labels fail before anything is written
    fingerprint = data_fingerprint([data.texts, data.labels])
    source = resolve_source(cfg.model.source, cfg.model.revision)  # before any file is touched
    with storage_errors(cfg.train.output_dir, "training into"):  # read-only, disk full: one clear error
        if is_main():
            run = prepare_run_dir(cfg, [*(inputs or []), cfg.data.path, cfg.model.source, source.path])
        else:
            run = RunDir(Path(cfg.train.output_dir), resuming=cfg.train.resume)
        with run.guard():  # a failure before the first step puts the directory back as it was
            return _classify_in(cfg, run, data, fingerprint, source, callbacks)


def _classify_in(
    cfg: Config, run: RunDir, data: Labelled, fingerprint: str, source: Any, callbacks: list[Any] | None
) -> Path:
    from transformers import DataCollatorWithPadding, Trainer, set_seed
    from transformers.integrations import TensorBoardCallback

    from .callbacks import best_model_metrics, closing_tensorboard, early_stopping_callbacks
    from .checkpoints import checkpoint_step, last_complete_checkpoint, trim_metrics
    from .train import (  # the chat path's run-dir handling, shared
        _first_eval_loss,
        _metrics_callback,
        _save_atomically,
        _training_args,
    )

    run_dir = run.path
    if run.resuming:
        check_data_unchanged(run_dir, fingerprint)
    if is_main() and not run.resuming:  # a resumed run's config.yaml is rewritten once it has finished
        dump_config(cfg, run_dir / "config.yaml")
    train_idx, val_idx = split_labelled(data, cfg.data.val_fraction, cfg.data.seed)
    check_world_size(len(train_idx))
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    args = _training_args(cfg, run_dir, device, dtype, bool(val_idx))
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
    model = _load_model(source.path, classes, device, cfg.model.trust_remote_code, tokenizer.pad_token_id)
    model = apply_method(
        model, _method_config(model, cfg.lora), source.path, cfg.train.gradient_checkpointing, "SEQ_CLS"
    )
    trainable, total = count_parameters(model)
    log.info("classifier over %d labels; trainable parameters %d of %d", len(classes), trainable, total)

    metrics_cb = _metrics_callback(run_dir / "metrics.jsonl")
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(run_dir / "tensorboard")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Items(train_enc.items),
        eval_dataset=_Items(val_enc.items) if val_idx else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_metrics,
        callbacks=[
            started_callback(run),
            metrics_cb,
            tensorboard,
            *early_stopping_callbacks(cfg.train),
            *(callbacks or []),
        ],
        optimizer_cls_and_kwargs=optimizer_spec(model, args, lr_factor_fn(cfg, model)),
    )
    clamp_warmup(trainer)  # a one-step run keeps a decay step
    checkpoint = last_complete_checkpoint(args.output_dir, is_main()) if run.resuming else None
    metrics: dict[str, Any] = {}
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        if is_main():
            trim_metrics(run_dir / "metrics.jsonl", checkpoint_step(checkpoint))
            metrics["eval_loss_before"] = _first_eval_loss(run_dir / "metrics.jsonl")
    elif val_idx:
        before = trainer.evaluate()
        metrics.update({f"{name}_before": before[k] for k, name in _HEADLINE.items()})
        prepare_for_training_after_evaluate(trainer)
    with closing_tensorboard(tensorboard):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    run.started()
    metrics.update(train_loss=result.training_loss, steps=trainer.state.global_step)
    if val_idx:  # the saved weights (the best ones under early stopping) on the validation split
        final = trainer.evaluate()
        metrics.update({name: final[k] for k, name in _HEADLINE.items()})
        best = best_model_metrics(trainer, run_dir)
        metrics.update({k: v for k, v in best.items() if k != "eval_loss"})
    if not is_main():
        return run_dir
    _save_atomically(model.save_pretrained, run_dir / weights_dir(cfg.lora.method))
    _save_atomically(tokenizer.save_pretrained, run_dir / "tokenizer")
    if run.resuming:
        dump_config(cfg, run_dir / "config.yaml")
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
    )
    write_run_card(run_dir, card)
    log.info("classifier finished: %s (accuracy %s)", run_dir, metrics.get("accuracy"))
    return run_dir


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
        max_len = self.card.data.get("max_length") or getattr(self.tokenizer, "model_max_length", None)
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
    tokenizer = load_tokenizer(run_dir / card.tokenizer)
    weights = run_dir / card.adapter
    if (weights / "adapter_config.json").is_file():
        source = resolve_source(card.base_model["source"], card.base_model.get("revision"))
        model = _load_model(source.path, labels, dev, False, tokenizer.pad_token_id)
        model = PeftModel.from_pretrained(model, str(weights))
    else:
        model = _load_model(weights, labels, dev, False, tokenizer.pad_token_id)
    model.eval()
    return Classifier(model, tokenizer, labels, card)
