"""Every `lora.method` trains, records itself in the run card, and chats; bad combinations fail early."""

import json

import pytest
import torch
from safetensors.torch import load_file

from test_train import make_cfg
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.modeling import load_model
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train
from tunesmith.training.fastloss import supports_fast_loss
from tunesmith.training.methods import apply_method, freeze_except, weights_dir

Q = [{"role": "user", "content": "你是谁？"}]

METHODS = [
    ("dora", []),
    ("rslora", []),
    ("loraplus", []),
    ("prompt_tuning", ["train.learning_rate=3e-2"]),
    ("p_tuning", ["train.learning_rate=3e-2"]),
    ("full", ["train.learning_rate=1e-3"]),
    ("freeze", ["lora.train_layers=1", "lora.train_modules=[lm_head]", "train.learning_rate=1e-3"]),
]


@pytest.mark.parametrize("method, extra", METHODS, ids=[m for m, _ in METHODS])
def test_method_trains_records_itself_and_chats(tmp_path, tiny_qwen, method, extra):
    run = run_train(make_cfg(tmp_path, tiny_qwen, "train.max_steps=5", f"lora.method={method}", *extra))
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["method"] == method and card["adapter"] == weights_dir(method)
    assert card["metrics"]["eval_loss"] < card["metrics"]["eval_loss_before"]
    bot = load_chatbot(run, device="cpu")
    tuned = bot.answer(Q)
    assert isinstance(tuned, str)
    if card["adapter"] == "adapter":
        peft_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert peft_cfg.get("use_dora", False) == (method == "dora")
        assert peft_cfg.get("use_rslora", False) == (method == "rslora")
        expected = {"prompt_tuning": "PROMPT_TUNING", "p_tuning": "P_TUNING"}.get(method, "LORA")
        assert peft_cfg["peft_type"] == expected
        return
    base = load_file(tiny_qwen / "model.safetensors")
    trained = load_file(run / "model" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    if method == "freeze":  # only the last layer and lm_head learned
        assert "lm_head.weight" in changed and any(k.startswith("model.layers.1.") for k in changed)
        assert all(k.startswith("model.layers.1.") or k == "lm_head.weight" for k in changed)
    else:
        assert changed == set(base)
    # chat --compare and evaluation switch to the real base model and back
    assert bot.answer(Q, base=True) == load_chatbot(run, device="cpu", base_only=True).answer(Q)
    assert bot.answer(Q) == tuned


def test_prompt_learning_falls_back_to_the_plain_loss(tiny_qwen):
    cfg = load_config(None, [f"model.source={tiny_qwen}", "data.path=x.json", "lora.method=prompt_tuning"])
    prompt = apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen)
    assert not supports_fast_loss(prompt)  # virtual tokens live in PeftModel.forward
    cfg.lora.method = "dora"
    assert supports_fast_loss(apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen))


def test_loraplus_gives_b_matrices_a_higher_learning_rate(tmp_path, tiny_qwen):
    from transformers import TrainingArguments

    from tunesmith.training.optim import lr_factor_fn, optimizer_spec

    cfg = load_config(None, [f"model.source={tiny_qwen}", "data.path=x.json", "lora.method=loraplus"])
    model = apply_method(load_model(tiny_qwen), cfg.lora, tiny_qwen)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, use_cpu=True)
    cls, kwargs = optimizer_spec(model, args, lr_factor_fn(cfg, model))
    by_lr = {g["lr"]: g["params"] for g in kwargs["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(by_lr) == 2
    high = max(by_lr)
    assert high == pytest.approx(1e-4 * cfg.lora.loraplus_lr_ratio)
    assert all("lora_B" in names[id(p)] for p in by_lr[high])
    assert all("lora_A" in names[id(p)] for p in by_lr[min(by_lr)])
    cfg.lora.method = "lora"
    assert optimizer_spec(model, args, lr_factor_fn(cfg, model)) is None  # plain Trainer optimizer


def test_qlora_on_cpu_fails_before_anything_is_written(tmp_path, tiny_qwen):
    cfg = make_cfg(tmp_path, tiny_qwen, "lora.method=qlora", "train.device=cpu")
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*lora.method=lora"):
        run_train(cfg)
    assert not (tmp_path / "run").exists()


def test_qlora_on_cuda_without_bitsandbytes_says_what_to_install(monkeypatch):
    import sys

    from tunesmith.errors import DependencyError
    from tunesmith.training.methods import check_method

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    cfg = load_config(None, ["model.source=m", "data.path=d.json", "lora.method=qlora"])
    with pytest.raises(DependencyError, match="pip install bitsandbytes"):
        check_method(cfg.lora, "cuda")
    cfg.lora.method = "lora"
    check_method(cfg.lora, "cpu")  # nothing to check


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_writes_a_model_equal_to_base_plus_adapter(tmp_path, tiny_qwen, dtype):
    # bf16: the frozen weights trained in bf16 (train.frozen_bf16); the merge uses the fp32 ones
    run = run_train(
        make_cfg(tmp_path, tiny_qwen, "lora.merge=true", "train.max_steps=3", f"train.dtype={dtype}")
    )
    bot = load_chatbot(run, device="cpu")
    merged = load_model(run / "merged")
    ids = torch.tensor([bot.fmt.encode_prompt(bot.with_system(Q))])
    with torch.no_grad():
        assert torch.allclose(bot.model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
    assert (run / "merged" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lora.method=prompt_tuning", "lora.merge=true"], "cannot fold the virtual tokens"),
        (["lora.method=qlora", "lora.merge=true"], "4-bit base"),
        (["lora.method=full", "lora.merge=true"], "already saves full weights"),
        (["lora.method=freeze"], "needs `lora.train_layers`"),
        (["lora.method=adapterfusion"], "`lora.method`: 'adapterfusion' is not one of"),
    ],
)
def test_incompatible_method_settings_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.source=m", "data.path=d.json", *overrides])


def test_freeze_names_the_modules_it_cannot_find(tiny_qwen):
    model = load_model(tiny_qwen)
    with pytest.raises(ConfigError) as e:
        freeze_except(model, 5, ["lm_heads"])
    msg = str(e.value)
    assert "model has 2 layers" in msg and "['lm_heads'] match no parameter" in msg and "lm_head" in msg
