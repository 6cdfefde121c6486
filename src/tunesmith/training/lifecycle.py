"""The run-dir lifecycle every training task shares (language model and classifier alike).

``open_run`` creates (or replaces, or resumes) the run directory only once the inputs have been
validated, and puts it back as it was if training fails before its first step; ``begin`` checks a
resumed run's data and records the config; ``trainer_callbacks`` attaches the run's metrics
stream, TensorBoard and early stopping; ``fit`` evaluates the "before" model (or resumes from the
last complete checkpoint) and trains; ``finish`` saves weights and tokenizer atomically and writes
the run card, the one record every later stage reads.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import Config, dump_config
from ..errors import ConfigError
from ..files import apply_umask, sha256_text, storage_errors
from ..logs import get_logger
from ..runcard import RunCard, write_run_card
from .callbacks import closing_tensorboard, early_stopping_callbacks
from .checkpoints import checkpoint_step, last_complete_checkpoint, trim_metrics
from .distributed import is_main, prepare_for_training_after_evaluate
from .optim import clamp_warmup
from .progress import progress_callback
from .rundir import RunDir, check_data_unchanged, prepare_run_dir, started_callback

log = get_logger(__name__)


def data_fingerprint(convs: Any) -> str:
    """A short hash of the training data, stored in the card; a resume checks it is unchanged."""
    return sha256_text(json.dumps(convs, ensure_ascii=False, sort_keys=True))[:16]


def metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        """Append every log (train and eval) to metrics.jsonl; add perplexity to eval logs.

        Also measures training throughput over this process's own steps (``tokens_per_s``), so
        a resumed run does not count the tokens of the steps it restored.
        """

        tokens_per_s: float | None = None
        segment: int | None = None  # 0 for a run's first process, 1 after its first resume, ...

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self._start = (time.perf_counter(), state.num_input_tokens_seen)
            earlier = [r["segment"] for r in read_metrics(path) if "segment" in r]
            self.segment = max(earlier) + 1 if earlier else 0

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            elapsed = time.perf_counter() - self._start[0]
            tokens = state.num_input_tokens_seen - self._start[1]
            self.tokens_per_s = tokens / elapsed if elapsed > 0 and tokens > 0 else None

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                apply_umask(checkpoint)  # the Trainer saves weights through private temp files

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs is None or not state.is_world_process_zero:
                return
            if "eval_loss" in logs:
                logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50))
            rec = {"step": state.global_step, "time": time.time(), **logs}
            if self.segment is not None:  # training has begun: which process, and for how long
                rec.update(segment=self.segment, segment_s=round(time.perf_counter() - self._start[0], 3))
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")

    return MetricsJsonl()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (none if it is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_totals(path: Path) -> dict[str, Any]:
    """Totals over every process that trained this run (after resumes): runtime summed over the
    steps kept, the training loss averaged over all logged steps, and how many resumes."""
    records = read_metrics(path)
    spans: dict[int, float] = {}
    for r in records:
        if "segment" in r:
            spans[r["segment"]] = max(spans.get(r["segment"], 0.0), r.get("segment_s", 0.0))
    losses = sorted((r["step"], r["loss"]) for r in records if "loss" in r and "eval_loss" not in r)
    weighted, steps, prev = 0.0, 0, 0
    for step, loss in losses:
        weighted += loss * (step - prev)
        steps += step - prev
        prev = step
    return {
        "train_runtime_s": round(sum(spans.values()), 3) if spans else None,
        "train_loss": weighted / steps if steps else None,
        "resumes": max(0, len(spans) - 1),
    }


def training_args(cfg: Config, run_dir: Path, device: str, dtype: str, has_val: bool) -> Any:
    from transformers import TrainingArguments

    t = cfg.train
    eval_steps = t.eval_steps or t.save_steps
    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps else -1,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size * 2,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type="polynomial",  # power 1 = linear decay from peak to lr_end
        lr_scheduler_kwargs={"lr_end": t.min_lr, "power": 1.0},
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_val else "no",
        eval_steps=eval_steps,
        seed=t.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=device == "cpu",
        report_to="none",  # TensorBoard is attached explicitly to write into the run dir
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # evaluation needs the loss only, never the logits
        disable_tqdm=True,
    )
    # transformers 5 renamed gradient_checkpointing; pass whichever this version knows.
    params = inspect.signature(TrainingArguments.__init__).parameters
    ckpt_key = (
        "activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing"
    )
    kwargs[ckpt_key] = t.gradient_checkpointing
    if t.early_stopping_patience:  # keep the best checkpoint and load it when training ends
        kwargs.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
        kwargs["restore_callback_states_from_checkpoint"] = True  # a resumed run keeps its patience count
    unknown = [k for k in t.trainer_args if k not in params]
    if unknown:
        raise ConfigError(f"`train.trainer_args` has keys TrainingArguments does not know: {unknown}")
    kwargs.update(t.trainer_args)
    return TrainingArguments(**kwargs)


def first_eval_loss(path: Path) -> float | None:
    """The step-0 evaluation of a run being resumed, from its metrics stream."""
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("step") == 0 and "eval_loss" in rec:
                return rec["eval_loss"]
    return None


def save_atomically(save: Any, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(str(tmp))
    apply_umask(tmp)  # safetensors writes through a private temp file
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def open_run(cfg: Config, reads: Sequence[str | Path | None], body: Callable[[RunDir], Path]) -> Path:
    """Prepare the run dir (rank 0 only under DDP) and run ``body`` in it.

    ``reads`` are the files the run reads: a directory holding one is never replaced. A failure
    before the first optimizer step puts the directory back as it was.
    """
    with storage_errors(cfg.train.output_dir, "training into"):  # read-only, disk full: one clear error
        if is_main():
            run = prepare_run_dir(cfg, [r for r in reads if r])
        else:  # DDP: rank 0 prepares the run dir
            run = RunDir(Path(cfg.train.output_dir), resuming=cfg.train.resume)
        with run.guard():
            return body(run)


def begin(run: RunDir, cfg: Config, fingerprint: str) -> None:
    """A resumed run must train on the same data; a new one records its config now."""
    if run.resuming:
        check_data_unchanged(run.path, fingerprint)
    if is_main() and not run.resuming:  # a resumed run's config.yaml is rewritten once it has finished
        dump_config(cfg, run.path / "config.yaml")


class Tracking:
    """The callbacks every run carries: started marker, metrics.jsonl, TensorBoard, early stopping."""

    def __init__(self, run: RunDir, cfg: Config, dtype: str, extra: list[Any] | None = None):
        from transformers.integrations import TensorBoardCallback

        self.metrics = metrics_callback(run.path / "metrics.jsonl")
        self.tensorboard = TensorBoardCallback()
        self.tensorboard.logging_dir = str(run.path / "tensorboard")  # it re-opens here after train ends
        self.callbacks = [
            started_callback(run),
            self.metrics,
            self.tensorboard,
            progress_callback(dtype, cfg.train.expected_seconds),
            *early_stopping_callbacks(cfg.train),
            *(extra or []),
        ]


def fit(
    trainer: Any, run: RunDir, tracking: Tracking, before: Callable[[], dict[str, Any]] | None
) -> tuple[Any, dict[str, Any]]:
    """Train, from the last complete checkpoint when resuming; ``before`` measures the start.

    Returns the Trainer's result and the metrics for the card: the "before" measures (from the
    metrics stream when resuming), train loss, runtime, steps and this process's tokens/s.
    """
    clamp_warmup(trainer)  # a one-step run keeps a decay step
    checkpoint = None  # the last checkpoint written completely: a kill mid-save leaves a partial one
    if run.resuming:
        checkpoint = last_complete_checkpoint(trainer.args.output_dir, remove_incomplete=is_main())
    metrics: dict[str, Any] = {}
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        if is_main():  # the steps after the checkpoint are logged again
            trim_metrics(run.path / "metrics.jsonl", checkpoint_step(checkpoint))
            metrics["eval_loss_before"] = first_eval_loss(run.path / "metrics.jsonl")
    elif before is not None:
        n = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
        log.info("measuring the validation loss before training, on %d examples", n)
        start = time.perf_counter()
        metrics.update(before())
        log.info("before training: %s (%.0f s)", _brief(metrics), time.perf_counter() - start)
        prepare_for_training_after_evaluate(trainer)  # DDP: else train() never wraps the model
    with closing_tensorboard(tracking.tensorboard):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    run.started()  # (a run with nothing left to train takes no step)
    metrics.update(
        train_loss=result.training_loss,
        train_runtime_s=result.metrics.get("train_runtime"),
        steps=trainer.state.global_step,
        train_tokens_per_s=tracking.metrics.tokens_per_s,  # non-padding tokens, this process only
    )
    totals = run_totals(run.path / "metrics.jsonl") if is_main() else {"resumes": 0}
    if totals["resumes"]:  # the Trainer's own figures cover this process's steps only
        metrics.update({k: v for k, v in totals.items() if v is not None})
    metrics["resumes"] = totals["resumes"]
    return result, metrics


def _brief(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{k.removesuffix('_before')} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)
    )


def finish(
    run: RunDir,
    cfg: Config,
    model: Any,
    tokenizer: Any,
    weights: str,
    card: RunCard,
    after_weights: Callable[[], None] | None = None,
) -> None:
    """Save weights and tokenizer atomically, the config of a resumed run, then the run card.

    ``after_weights`` runs once the weights are saved (e.g. merging an adapter into its base).
    """
    save_atomically(model.save_pretrained, run.path / weights)  # adapter or full weights
    if after_weights is not None:
        after_weights()
    save_atomically(tokenizer.save_pretrained, run.path / "tokenizer")
    if run.resuming:
        dump_config(cfg, run.path / "config.yaml")
    write_run_card(run.path, card)
