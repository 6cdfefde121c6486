"""run_train(cfg): data → model → Trainer → run directory with adapter and run card."""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .callbacks import best_model_metrics, closing_tensorboard, early_stopping_callbacks
from .checkpoints import checkpoint_step, last_complete_checkpoint, trim_metrics
from .config import Config, dump_config
from .data import load_records, split_records, take
from .data.convert import write_raw
from .distributed import (
    barrier,
    check_deepspeed,
    check_world_size,
    is_main,
    prepare_for_training_after_evaluate,
)
from .errors import ConfigError, RunDirError
from .fastloss import make_trainer
from .files import atomic_write_json, sha256_text, storage_errors
from .levers import (
    FROZEN_BF16_METHODS,
    restore_fp32,
    store_frozen_in_bf16,
    use_fast_dropout,
)
from .logs import get_logger
from .methods import apply_method, check_method, count_parameters, load_for_training, weights_dir
from .modeling import load_model, load_tokenizer, pick_device, pick_dtype, resolve_source
from .optim import clamp_warmup, lr_factor_fn, optimizer_spec
from .replay import load_replay, mix_replay
from .runcard import RunCard, base_model_record, write_run_card
from .rundir import RunDir, check_data_unchanged, prepare_run_dir, started_callback
from .templates import ChatFormat, Example, encode_all, resolve_template

log = get_logger(__name__)


def _load_data(cfg: Config) -> tuple[list[Any], Any]:
    """Validated conversations, cleaned first when ``data.clean`` names a recipe."""
    from .data.clean import clean_records, load_recipe

    cleaning = None
    prepare = None
    if cfg.data.clean:
        recipe = load_recipe(cfg.data.clean)

        def prepare(raw: list[Any]) -> list[Any]:
            nonlocal cleaning
            cleaning = clean_records(raw, recipe)
            log.info(
                "cleaning: %d → %d records, removed %s",
                len(raw),
                len(cleaning.records),
                cleaning.report["removed"],
            )
            return [(None, r) for r in cleaning.records]

    convs = load_records(cfg.data.path, cfg.data.format, cfg.data.system_prompt, prepare)
    return take(convs, cfg.data.limit, cfg.data.sample, cfg.data.seed), cleaning


def _clean_summary(cfg: Config, cleaning: Any) -> dict[str, Any] | None:
    if not cleaning:
        return None
    rep = cleaning.report
    return {"recipe": cfg.data.clean, "report_fingerprint": rep["fingerprint"], "removed": rep["removed"]}


def data_fingerprint(convs: list[Any]) -> str:
    return sha256_text(json.dumps(convs, ensure_ascii=False, sort_keys=True))[:16]


class _ListDataset:
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "attention_mask": [1] * len(ex.input_ids), "labels": ex.labels}


def _metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        """Append every log (train and eval) to metrics.jsonl; add perplexity to eval logs.

        Also measures training throughput over this process's own steps (``tokens_per_s``), so
        a resumed run does not count the tokens of the steps it restored.
        """

        tokens_per_s: float | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self._start = (time.perf_counter(), state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            elapsed = time.perf_counter() - self._start[0]
            tokens = state.num_input_tokens_seen - self._start[1]
            self.tokens_per_s = tokens / elapsed if elapsed > 0 and tokens > 0 else None

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs is None or not state.is_world_process_zero:
                return
            if "eval_loss" in logs:
                logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50))
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "time": time.time(), **logs}) + "\n")

    return MetricsJsonl()


def _training_args(cfg: Config, run_dir: Path, device: str, dtype: str, has_val: bool) -> Any:
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


def _first_eval_loss(path: Path) -> float | None:
    """The step-0 evaluation of a run being resumed, from its metrics stream."""
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("step") == 0 and "eval_loss" in rec:
                return rec["eval_loss"]
    return None


def _save_atomically(save: Any, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _apply_levers(cfg: Config, model: Any, dtype: str) -> list[str]:
    """Switch on the model-side speed levers that apply; return the modules stored in bf16."""
    frozen: list[str] = []
    if (
        cfg.train.frozen_bf16
        and dtype == "bfloat16"
        and cfg.lora.method in FROZEN_BF16_METHODS
        and "deepspeed" not in cfg.train.trainer_args  # DeepSpeed manages the weights' dtypes itself
    ):
        frozen = store_frozen_in_bf16(model)
        log.info("frozen linear weights stored in bf16: %d modules", len(frozen))
    if cfg.train.fast_dropout:
        swapped = use_fast_dropout(model)
        if swapped:
            log.debug("LoRA dropout: %d modules draw masks with rand >= p", swapped)
    return frozen


def run_train(cfg: Config, callbacks: list[Any] | None = None, inputs: Sequence[str | Path] = ()) -> Path:
    """Fine-tune ``cfg.model.source`` on ``cfg.data`` with LoRA; return the finished run dir.

    Args:
        cfg: the validated config.
        callbacks: extra Trainer callbacks (e.g. the pruning of ``tunesmith tune``).
        inputs: other files the run reads (the config file): a directory holding one is never
            replaced by ``train.overwrite``.
    """
    if cfg.model.task == "classification":  # a sequence classifier on text + label data
        from .classify import run_classify

        return run_classify(cfg, callbacks, list(inputs))
    check_method(cfg.lora, pick_device(cfg.train.device))  # e.g. QLoRA on CPU fails before anything runs
    check_deepspeed(cfg.train.trainer_args, pick_device(cfg.train.device))
    convs, cleaning = _load_data(cfg)  # validate (and clean) before anything else
    replay = load_replay(cfg.data)
    if cfg.eval.at_end:
        from .evaluation import check_eval_inputs

        check_eval_inputs(cfg.eval)  # a bad eval file fails now, not after training
    fingerprint = data_fingerprint(convs if replay is None else [convs, replay.fingerprint])
    source = resolve_source(cfg.model.source, cfg.model.revision)  # a typo fails before any file is touched
    # Only now, with config, data and model validated, is the run dir created (or a run replaced).
    reads = [*inputs, cfg.data.path, cfg.model.source, source.path, cfg.data.replay_path, cfg.data.clean]
    reads += [cfg.eval.data, cfg.eval.general] if cfg.eval.at_end else []
    with storage_errors(cfg.train.output_dir, "training into"):  # read-only, disk full: one clear error
        if is_main():
            run = prepare_run_dir(cfg, [r for r in reads if r])
        else:  # DDP: rank 0 prepares the run dir
            run = RunDir(Path(cfg.train.output_dir), resuming=cfg.train.resume)
        with run.guard():  # a failure before the first step puts the directory back as it was
            return _train_in(cfg, run, convs, cleaning, replay, fingerprint, source, callbacks)


def _train_in(
    cfg: Config,
    run: RunDir,
    convs: list[Any],
    cleaning: Any,
    replay: Any,
    fingerprint: str,
    source: Any,
    callbacks: list[Any] | None,
) -> Path:
    from transformers import DataCollatorForSeq2Seq, set_seed
    from transformers.integrations import TensorBoardCallback

    run_dir = run.path
    if run.resuming:
        check_data_unchanged(run_dir, fingerprint)
    if is_main():
        if not run.resuming:  # a resumed run's config.yaml is rewritten only once it has finished
            dump_config(cfg, run_dir / "config.yaml")
        if cleaning:
            atomic_write_json(run_dir / "clean_report.json", cleaning.report)
            write_raw(cleaning.removed, run_dir / "removed.jsonl")
    train_convs, val_convs = split_records(convs, cfg.data.val_fraction, cfg.data.seed)
    check_world_size(len(train_convs))  # a DDP launch with more processes than examples

    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    args = _training_args(cfg, run_dir, device, dtype, bool(val_convs))  # bad trainer_args fail early

    tokenizer = load_tokenizer(source.path, cfg.model.trust_remote_code)
    tokenizer.chat_template = resolve_template(tokenizer, cfg.model.chat_template)
    fmt = ChatFormat(tokenizer, tokenizer.chat_template)
    train_ex, train_rep = encode_all(fmt, train_convs, cfg.data.max_length)
    val_ex, val_rep = encode_all(fmt, val_convs, cfg.data.max_length)
    val_ex.sort(key=lambda e: len(e.input_ids))  # order is irrelevant to eval loss; less padding
    for name, rep in (("train", train_rep), ("validation", val_rep)):
        if rep.truncated or rep.skipped:
            log.warning(
                "%s: %d records truncated to %d tokens, %d skipped (no answer token left)",
                name,
                rep.truncated,
                cfg.data.max_length,
                rep.skipped,
            )
    if not train_ex:
        raise RunDirError("no training example is left after encoding; raise data.max_length")
    data_report = {
        "path": str(cfg.data.path),
        "fingerprint": fingerprint,
        "records": len(convs),
        "train": train_rep.as_dict(),
        "validation": val_rep.as_dict(),
    }
    if replay is not None:  # general data mixed into training against forgetting
        train_ex, data_report["replay"] = mix_replay(
            fmt, train_ex, replay, cfg.data.max_length, cfg.data.seed
        )
    if is_main():
        atomic_write_json(run_dir / "data_report.json", data_report)
    barrier()  # DDP: the others wait until rank 0 has set up the run dir

    set_seed(cfg.train.seed)
    model = load_for_training(source.path, cfg.lora, device, dtype, cfg.model.trust_remote_code)
    model = apply_method(model, cfg.lora, source.path, cfg.train.gradient_checkpointing)
    frozen_bf16 = _apply_levers(cfg, model, dtype)
    trainable, total = count_parameters(model)
    log.info(
        "device %s, compute dtype %s; trainable parameters %d of %d (%.2f%%)",
        device,
        dtype,
        trainable,
        total,
        100 * trainable / total,
    )

    metrics_cb = _metrics_callback(run_dir / "metrics.jsonl")
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(run_dir / "tensorboard")  # it re-opens here after train ends
    trainer = make_trainer(
        cfg.train.unpadded,
        cfg.train.label_logits_only,
        cfg.train.pad_to_multiple_of,
        model=model,
        args=args,
        train_dataset=_ListDataset(train_ex),
        eval_dataset=_ListDataset(val_ex) if val_ex else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
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
    # the last checkpoint written completely: a process killed mid-save leaves a partial one
    checkpoint = None
    if run.resuming:
        checkpoint = last_complete_checkpoint(args.output_dir, remove_incomplete=is_main())
    metrics: dict[str, Any] = {}
    if checkpoint:
        log.info("resuming from %s", checkpoint)
        if is_main():  # the steps after the checkpoint are logged again
            trim_metrics(run_dir / "metrics.jsonl", checkpoint_step(checkpoint))
            metrics["eval_loss_before"] = _first_eval_loss(run_dir / "metrics.jsonl")
    elif val_ex:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
        prepare_for_training_after_evaluate(trainer)  # DDP: else train() never wraps the model
    with closing_tensorboard(tensorboard):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    run.started()  # (a run with nothing left to train takes no step)
    metrics.update(
        train_loss=result.training_loss,
        train_runtime_s=result.metrics.get("train_runtime"),
        steps=trainer.state.global_step,
    )
    metrics["train_tokens_per_s"] = metrics_cb.tokens_per_s  # non-padding tokens, this process only
    if val_ex:
        final = [
            h
            for h in trainer.state.log_history
            if "eval_loss" in h and h.get("step") == trainer.state.global_step
        ]
        metrics["eval_loss"] = final[-1]["eval_loss"] if final else trainer.evaluate()["eval_loss"]
        metrics.update(best_model_metrics(trainer, run_dir))  # early stopping: the best weights are saved
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))

    if not is_main():  # DDP: one process writes the run dir
        return run_dir
    _save_atomically(model.save_pretrained, run_dir / weights_dir(cfg.lora.method))  # adapter or full weights
    if cfg.lora.merge:
        if frozen_bf16:  # merge into the original fp32 weights, not their bf16 training copies
            fresh = load_model(source.path, "float32", device, cfg.model.trust_remote_code)
            restore_fp32(model, frozen_bf16, fresh)
            del fresh
        _save_atomically(model.merge_and_unload().save_pretrained, run_dir / "merged")
        tokenizer.save_pretrained(run_dir / "merged")
    _save_atomically(tokenizer.save_pretrained, run_dir / "tokenizer")
    if run.resuming:
        dump_config(cfg, run_dir / "config.yaml")
    card = RunCard(
        base_model=base_model_record(source, cfg.model.revision),
        template={"fingerprint": fmt.fingerprint, "end_of_turn": fmt.eot_token},
        system_prompt=cfg.data.system_prompt,
        generation=cfg.generation.__dict__.copy(),
        data={
            "path": str(cfg.data.path),
            "fingerprint": fingerprint,
            "train_records": train_rep.kept,
            "validation_records": val_rep.kept,
            "clean": _clean_summary(cfg, cleaning),
            "replay": data_report.get("replay"),
        },
        metrics=metrics,
        adapter=weights_dir(cfg.lora.method),
        method=cfg.lora.method,
    )
    write_run_card(run_dir, card)
    log.info("run finished: %s", run_dir)
    if cfg.eval.at_end:
        from .evaluation import eval_after_training

        del trainer, model  # free the training copy; the evaluation loads the run as `chat` does
        eval_after_training(run_dir, cfg.eval, val_convs)
    return run_dir
