"""End to end on tiny random models: train → run dir → chat, interruption and resume."""

import json

import pytest
import torch

from conftest import EXAMPLE_DATA
from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.errors import RunDirError
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train


def make_cfg(tmp_path, model_dir, *extra):
    return load_config(
        None,
        [
            f"model.source={model_dir}",
            f"data.path={EXAMPLE_DATA}",
            "data.limit=48",
            "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛",
            "data.val_fraction=0.125",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=30",
            "train.learning_rate=3e-3",
            "train.logging_steps=5",
            "train.save_steps=10",
            "train.batch_size=4",
            "train.grad_accum=1",
            "train.dtype=float32",
            "generation.temperature=0",
            "generation.max_new_tokens=8",
            *extra,
        ],
    )


def read_metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["tiny_qwen", "tiny_llama"])
def test_train_writes_a_complete_run_dir(tmp_path, arch, request):
    model_dir = request.getfixturevalue(arch)
    cfg = make_cfg(tmp_path, model_dir)
    before = {k: v.clone() for k, v in _load_state(model_dir).items()}
    run_dir = run_train(cfg)

    for name in [
        "tunesmith.json",
        "config.yaml",
        "metrics.jsonl",
        "data_report.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "tokenizer/tokenizer.json",
        "checkpoints/checkpoint-30",
    ]:
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["system_prompt"] == "现在你要扮演皇帝身边的女人--甄嬛"
    assert card["template"]["end_of_turn"] == "<|im_end|>"
    assert card["base_model"]["kind"] == "dir" and len(card["base_model"]["content_hash"]) == 64
    assert card["data"]["train_records"] + card["data"]["validation_records"] == 48
    assert card["generation"]["temperature"] == 0
    m = card["metrics"]
    assert m["steps"] == 30 and m["eval_loss"] < m["eval_loss_before"]

    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("eval_perplexity" in r for r in read_metrics(run_dir))

    # LoRA weights changed, base weights did not.
    from safetensors.torch import load_file

    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    bot = load_chatbot(run_dir, device="cpu")
    base_now = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in bot.model.state_dict().items()
        if "lora_" not in k
    }
    for k, v in before.items():
        assert torch.equal(base_now[k], v), k

    answer = bot.answer([{"role": "user", "content": "你是谁？"}])
    assert isinstance(answer, str)
    assert bot.with_system([{"role": "user", "content": "x"}])[0]["content"] == card["system_prompt"]


def _load_state(model_dir):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_interrupt_then_resume(tmp_path, tiny_qwen, monkeypatch):
    from transformers import TrainerCallback

    class StopAt13(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 13:
                raise KeyboardInterrupt

    cfg = make_cfg(tmp_path, tiny_qwen)
    orig_trainer_cls = __import__("transformers").Trainer

    class StoppingTrainer(orig_trainer_cls):
        def __init__(self, *a, **kw):
            kw["callbacks"] = [*kw.get("callbacks", []), StopAt13()]
            super().__init__(*a, **kw)

    monkeypatch.setattr("transformers.Trainer", StoppingTrainer)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert not (run_dir / "tunesmith.json").exists()  # an interrupted run never looks finished
    assert (run_dir / "checkpoints" / "checkpoint-10").is_dir()
    with pytest.raises(RunDirError, match="did not finish"):
        load_chatbot(run_dir)
    with pytest.raises(RunDirError, match="train.resume=true"):
        run_train(cfg)

    resumed = run_train(make_cfg(tmp_path, tiny_qwen, "train.resume=true"))
    card = json.loads((resumed / "tunesmith.json").read_text())
    assert card["metrics"]["steps"] == 30
    assert card["metrics"]["eval_loss_before"] > card["metrics"]["eval_loss"]  # from the first run's log
    assert card["metrics"]["train_tokens_per_s"] > 0
    steps = [r["step"] for r in read_metrics(resumed) if "loss" in r]
    assert 15 in steps and 20 in steps  # continued after checkpoint-10, not from step 0 again
    assert steps.count(5) == 1

    with pytest.raises(RunDirError, match="finished run"):
        run_train(cfg)


def test_cli_train_and_chat(tmp_path, tiny_qwen, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        f"model:\n  source: {tiny_qwen}\ndata:\n  path: {EXAMPLE_DATA}\n  limit: 16\n", encoding="utf-8"
    )
    out = tmp_path / "cli_run"
    rc = main(
        [
            "train",
            str(cfg_path),
            f"train.output_dir={out}",
            "train.max_steps=3",
            "train.dtype=float32",
            "generation.max_new_tokens=4",
        ]
    )
    assert rc == 0 and (out / "tunesmith.json").is_file()
    capsys.readouterr()
    rc = main(["chat", str(out), "--compare", "--prompt", "你是谁？", "--temperature", "0"])
    text = capsys.readouterr().out
    assert rc == 0 and "Q: 你是谁？" in text and "base:" in text and "fine-tuned:" in text
    rc = main(["chat", str(out), "--prompt", "hi", "--max-new-tokens", "2", "--seed", "1"])
    assert rc == 0
    answers = iter(["你好", "/reset", "", "/exit"])
    import io

    from tunesmith.cli.chat import chat_loop

    buf = io.StringIO()
    chat_loop(load_chatbot(out), load_chatbot(out).defaults, lambda _p: next(answers), buf)
    assert "bot> " in buf.getvalue() and "(history cleared)" in buf.getvalue()


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  source: x\ndata:\n  path: d.json\nlora:\n  rr: 3\n", encoding="utf-8")
    assert main(["train", str(bad)]) == 2
    assert "unknown key `lora.rr`" in capsys.readouterr().err
    assert main(["chat", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_train_on_cleaned_data_records_the_cleaning(tmp_path, tiny_qwen):
    data = tmp_path / "dirty.json"
    rows = json.loads(EXAMPLE_DATA.read_text(encoding="utf-8"))[:40]
    rows += [rows[0], {"instruction": "空", "input": "", "output": "  "}]  # a duplicate and an empty answer
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    cfg = make_cfg(tmp_path, tiny_qwen, f"data.path={data}", "data.clean=default", "train.max_steps=2")
    run_dir = run_train(cfg)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    report = json.loads((run_dir / "clean_report.json").read_text(encoding="utf-8"))
    assert card["data"]["clean"]["report_fingerprint"] == report["fingerprint"]
    assert report["removed"]["exact_duplicate"] == 1 and report["removed"]["missing_value"] == 1
    assert len((run_dir / "removed.jsonl").read_text(encoding="utf-8").splitlines()) >= 2
    assert card["data"]["train_records"] + card["data"]["validation_records"] == report["output_records"]
