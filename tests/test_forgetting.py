"""Forgetting controls: differential learning rates by module group, and replay of general data."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_json
from test_train import make_cfg
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.modeling import load_model
from tunesmith.templates import ChatFormat, Example
from tunesmith.training import run_train
from tunesmith.training.methods import apply_method
from tunesmith.training.optim import lr_factor_fn
from tunesmith.training.replay import Replay, _interleave, mix_replay


def cfg_with(tiny, *overrides):
    return load_config(None, [f"model.source={tiny}", "data.path=d.json", *overrides])


def test_layer_decay_and_multipliers_give_each_group_its_factor(tiny_qwen):
    cfg = cfg_with(
        tiny_qwen, "lora.method=full", "train.layer_lr_decay=0.5", "train.lr_multipliers={'^model[.]norm': 2}"
    )
    model = apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen)
    f = lr_factor_fn(cfg, model)
    assert f("model.layers.1.mlp.up_proj.weight") == 1.0  # the top layer learns at the full rate
    assert f("model.layers.0.mlp.up_proj.weight") == 0.5
    assert f("model.embed_tokens.weight") == 0.25  # below layer 0
    assert f("lm_head.weight") == 1.0
    assert f("model.layers.0.input_layernorm.weight") == 0.5  # patterns are searched; this one is anchored
    assert f("model.norm.weight") == 2.0


def test_lora_names_get_their_layer_factor_and_loraplus_multiplies(tiny_qwen):
    cfg = cfg_with(tiny_qwen, "lora.method=loraplus", "train.layer_lr_decay=0.5")
    model = apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen)
    f = lr_factor_fn(cfg, model)
    assert f("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == 0.5
    assert f("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight") == 0.5 * 16


def test_a_pattern_matching_nothing_is_refused(tiny_qwen):
    cfg = cfg_with(tiny_qwen, "train.lr_multipliers={embed_tokens: 0.1}")  # embeddings are frozen in LoRA
    model = apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen)
    with pytest.raises(ConfigError, match=r"\['embed_tokens'\] match no trainable parameter.*lora_A"):
        lr_factor_fn(cfg, model)


def test_zero_multiplier_keeps_a_group_fixed_while_others_learn(tmp_path, tiny_qwen):
    extra = [
        "lora.method=full",
        "train.max_steps=3",
        "train.lr_multipliers={embed_tokens: 0, 'layers\\.0\\.': 0}",
    ]
    run = run_train(make_cfg(tmp_path, tiny_qwen, *extra))
    base = load_file(tiny_qwen / "model.safetensors")
    tuned = load_file(run / "model" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert not any(k.startswith(("model.embed_tokens", "model.layers.0.")) for k in changed)
    assert any(k.startswith("model.layers.1.") for k in changed) and "lm_head.weight" in changed


def test_interleave_spreads_the_extra_examples_evenly():
    task, extra = list(range(8)), ["a", "b"]
    assert _interleave(task, extra) == [0, 1, 2, 3, "a", 4, 5, 6, 7, "b"]
    assert _interleave([0], []) == [0] and _interleave([], ["a"]) == ["a"]


def test_mix_replay_draws_the_ratio_and_cycles_a_short_file(tiny_qwen):
    from transformers import AutoTokenizer

    fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_qwen))
    task = [Example([1, 2, 3], [-100, 2, 3], False)] * 30
    convs = [
        [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(4)
    ]
    mixed, report = mix_replay(fmt, task, Replay("g.json", 0.25, convs), 64, seed=0)
    assert report["used"] == 10 and len(mixed) == 40  # 10 / 40 = 25%
    assert report["usable"] == 4  # a short file is cycled through, each record used 2-3 times


def test_training_with_replay_records_it(tmp_path, tiny_qwen):
    general = [{"instruction": f"What is {i} + {i}?", "input": "", "output": str(2 * i)} for i in range(30)]
    path = write_json(tmp_path / "general.json", general)
    run = run_train(
        make_cfg(
            tmp_path, tiny_qwen, f"data.replay_path={path}", "data.replay_ratio=0.25", "train.max_steps=2"
        )
    )
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))["replay"]
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    kept = card["data"]["train_records"]
    assert report["used"] == round(kept / 3) and card["data"]["replay"] == report
    assert card["data"]["validation_records"] == 6  # validation stays task data only


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.replay_path=g.json"], "go together"),
        (["data.replay_ratio=0.2"], "go together"),
        (["data.replay_path=g.json", "data.replay_ratio=1"], r"must be in \[0, 1\)"),
        (["train.lr_multipliers={embed: -1}"], "numbers >= 0"),
        (["train.lr_multipliers={'layers.(': 0.5}"], "regular expressions"),
        (["train.layer_lr_decay=0"], r"must be in \(0, 1\]"),
    ],
)
def test_bad_forgetting_settings_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.source=m", "data.path=d.json", *overrides])
