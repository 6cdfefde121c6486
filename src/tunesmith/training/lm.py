"""Language-model fine-tuning: data → template → model + method → Trainer → run directory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..data import load_records, split_records, take
from ..data.convert import write_raw
from ..errors import RunDirError
from ..files import atomic_write_json
from ..logs import get_logger
from ..modeling import load_model, load_tokenizer, resolve_source
from ..runcard import RunCard, base_model_record
from ..runtime.hardware import choose_dtype, pick_device, use_threads
from ..templates import ChatFormat, Example, encode_all, resolve_template
from .callbacks import best_model_metrics
from .distributed import barrier, check_deepspeed, check_world_size, is_main
from .fastloss import make_trainer
from .levers import FROZEN_BF16_METHODS, restore_fp32, store_frozen_in_bf16, use_fast_dropout
from .lifecycle import (
    Tracking,
    begin,
    data_fingerprint,
    finish,
    fit,
    open_run,
    save_atomically,
    training_args,
)
from .methods import apply_method, check_method, count_parameters, load_for_training, weights_dir
from .optim import lr_factor_fn, optimizer_spec
from .replay import load_replay, mix_replay
from .rundir import RunDir

log = get_logger(__name__)


def load_training_data(cfg: Config) -> tuple[list[Any], Any]:
    """Validated conversations, cleaned first when ``data.clean`` names a recipe."""
    from ..data.clean import clean_records, load_recipe

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


class _ListDataset:
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "attention_mask": [1] * len(ex.input_ids), "labels": ex.labels}


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


def train_lm(cfg: Config, callbacks: list[Any] | None = None, inputs: Sequence[str | Path] = ()) -> Path:
    """Fine-tune ``cfg.model.source`` on ``cfg.data`` (LoRA or another method); return the run dir.

    Called by ``run_train`` for ``model.task: chat`` (arguments as there).
    """
    check_method(cfg.lora, pick_device(cfg.train.device))  # e.g. QLoRA on CPU fails before anything runs
    check_deepspeed(cfg.train.trainer_args, pick_device(cfg.train.device))
    convs, cleaning = load_training_data(cfg)  # validate (and clean) before anything else
    replay = load_replay(cfg.data)
    if cfg.eval.at_end:
        from ..evaluation import check_eval_inputs

        check_eval_inputs(cfg.eval)  # a bad eval file fails now, not after training
    fingerprint = data_fingerprint(convs if replay is None else [convs, replay.fingerprint])
    source = resolve_source(cfg.model.source, cfg.model.revision)  # a typo fails before any file is touched
    # Only now, with config, data and model validated, is the run dir created (or a run replaced).
    reads = [*inputs, cfg.data.path, cfg.model.source, source.path, cfg.data.replay_path, cfg.data.clean]
    reads += [cfg.eval.data, cfg.eval.general] if cfg.eval.at_end else []
    return open_run(
        cfg, reads, lambda run: _train_in(cfg, run, convs, cleaning, replay, fingerprint, source, callbacks)
    )


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

    run_dir = run.path
    begin(run, cfg, fingerprint)
    if is_main() and cleaning:
        atomic_write_json(run_dir / "clean_report.json", cleaning.report)
        write_raw(cleaning.removed, run_dir / "removed.jsonl")
    train_convs, val_convs = split_records(convs, cfg.data.val_fraction, cfg.data.seed)
    check_world_size(len(train_convs))  # a DDP launch with more processes than examples

    device = pick_device(cfg.train.device)
    threads = use_threads(cfg.train.threads)
    compute = choose_dtype(cfg.train.dtype, device, source.path)
    dtype = compute.dtype
    log.info("compute dtype %s (%s); %d CPU threads", dtype, compute.reason, threads)
    args = training_args(cfg, run_dir, device, dtype, bool(val_convs))  # bad trainer_args fail early

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

    tracking = Tracking(run, cfg, dtype, callbacks)
    trainer = make_trainer(
        cfg.train.unpadded,
        cfg.train.label_logits_only,
        cfg.train.pad_to_multiple_of,
        model=model,
        args=args,
        train_dataset=_ListDataset(train_ex),
        eval_dataset=_ListDataset(val_ex) if val_ex else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=tracking.callbacks,
        optimizer_cls_and_kwargs=optimizer_spec(model, args, lr_factor_fn(cfg, model)),
    )
    before = (lambda: {"eval_loss_before": trainer.evaluate()["eval_loss"]}) if val_ex else None
    _, metrics = fit(trainer, run, tracking, before)
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
    card = RunCard(
        base_model=base_model_record(source, cfg.model.revision),
        template={"text": fmt.template, "fingerprint": fmt.fingerprint, "end_of_turn": fmt.eot_token},
        system_prompt=cfg.data.system_prompt,
        generation=cfg.generation.as_dict(),
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
        max_length=cfg.data.max_length,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype,
        compute={**compute.as_dict(), "threads": threads},
    )

    def merge() -> None:  # after the adapter is saved: merging unloads it from the model
        if frozen_bf16:  # merge into the original fp32 weights, not their bf16 training copies
            fresh = load_model(source.path, "float32", device, cfg.model.trust_remote_code)
            restore_fp32(model, frozen_bf16, fresh)
            del fresh
        save_atomically(model.merge_and_unload().save_pretrained, run_dir / "merged")
        tokenizer.save_pretrained(run_dir / "merged")

    finish(run, cfg, model, tokenizer, weights_dir(cfg.lora.method), card, merge if cfg.lora.merge else None)
    log.info("run finished: %s", run_dir)
    if cfg.eval.at_end:
        from ..evaluation import eval_after_training

        del trainer, model  # free the training copy; the evaluation loads the run as `chat` does
        eval_after_training(run_dir, cfg.eval, val_convs)
    return run_dir
