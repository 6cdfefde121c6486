"""Early stopping on validation loss: stops after `patience` evaluations without a gain larger than
`min_delta`, keeps the best checkpoint, saves its weights and reports it in the run card."""

import json

import pytest
import torch
from safetensors.torch import load_file

from test_train import make_cfg, read_metrics
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.training import run_train

WEIGHTS = {"adapter": "adapter_model.safetensors", "model": "model.safetensors"}


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "full"])
def test_stops_after_patience_and_keeps_the_best_checkpoint(tmp_path, tiny_qwen, method):
    # A min_delta no gain can reach: every evaluation after the first counts as "no improvement",
    # so with patience 2 training stops at the third evaluation (step 6) whatever the losses are.
    cfg = make_cfg(
        tmp_path,
        tiny_qwen,
        f"lora.method={method}",
        "train.max_steps=40",
        "train.save_steps=2",
        "train.save_total_limit=1",
        "train.early_stopping_patience=2",
        "train.early_stopping_min_delta=100",
    )
    run = run_train(cfg)
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    m = card["metrics"]
    assert m["steps"] == 6 and m["stopped_early"] is True
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run) if "eval_loss" in r and r["step"] > 0}
    assert sorted(evals) == [2, 4, 6]
    best_step = min(evals, key=evals.get)
    assert m["best_step"] == best_step and m["eval_loss"] == pytest.approx(evals[best_step])
    assert m["best_checkpoint"] == f"checkpoints/checkpoint-{best_step}"
    best = run / m["best_checkpoint"]
    assert best.is_dir()  # kept although save_total_limit=1
    # the run's weights are the best checkpoint's, not the last step's
    name = WEIGHTS[card["adapter"]]
    saved, kept = load_file(run / card["adapter"] / name), load_file(best / name)
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)


def test_overshooting_run_saves_the_best_weights_not_the_last(tmp_path, tiny_qwen):
    # A learning rate too high for the tiny model: validation loss bottoms out, then rises.
    cfg = make_cfg(
        tmp_path,
        tiny_qwen,
        "train.max_steps=40",
        "train.save_steps=2",
        "train.learning_rate=3e-2",
        "train.warmup_ratio=0",
        "train.early_stopping_patience=2",
    )
    run = run_train(cfg)
    m = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))["metrics"]
    assert m["stopped_early"] and m["best_step"] < m["steps"] < 40
    saved = load_file(run / "adapter" / WEIGHTS["adapter"])
    best = load_file(run / m["best_checkpoint"] / WEIGHTS["adapter"])
    last = load_file(run / "checkpoints" / f"checkpoint-{m['steps']}" / WEIGHTS["adapter"])
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)


def test_resume_keeps_the_patience_count(tmp_path, tiny_qwen, monkeypatch):
    from transformers import Trainer, TrainerCallback

    class StopAt5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt

    class StoppingTrainer(Trainer):
        def __init__(self, *a, **kw):
            kw["callbacks"] = [*kw.get("callbacks", []), StopAt5()]
            super().__init__(*a, **kw)

    extra = ["train.save_steps=2", "train.early_stopping_patience=2", "train.early_stopping_min_delta=100"]
    monkeypatch.setattr("transformers.Trainer", StoppingTrainer)
    with pytest.raises(KeyboardInterrupt):
        run_train(make_cfg(tmp_path, tiny_qwen, *extra))
    monkeypatch.undo()
    # checkpoint-4 saw one evaluation without a gain; one more ends the run at step 6, not 8
    run = run_train(make_cfg(tmp_path, tiny_qwen, *extra, "train.resume=true"))
    m = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))["metrics"]
    assert m["steps"] == 6 and m["stopped_early"]


def test_without_early_stopping_the_card_has_no_best_checkpoint(tiny_run):
    card = json.loads((tiny_run / "tunesmith.json").read_text(encoding="utf-8"))
    assert "best_checkpoint" not in card["metrics"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.val_fraction=0", "train.early_stopping_patience=2"], "set `data.val_fraction` > 0"),
        (
            ["train.early_stopping_patience=2", "train.save_steps=10", "train.eval_steps=4"],
            "must be a multiple of `train.eval_steps`",
        ),
        (["train.early_stopping_patience=0"], "must be >= 1"),
        (["train.early_stopping_min_delta=-1"], "must be >= 0"),
    ],
)
def test_bad_early_stopping_settings_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.source=m", "data.path=d.json", *overrides])
