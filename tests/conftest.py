"""Shared fixtures: tiny random models and a tokenizer trained on the fly (offline, seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "data" / "zhenhuan_roleplay.json"
SHARED_HUANHUAN = REPO.parent / "shared" / "data" / "huanhuan.json"

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _corpus() -> list[str]:
    records = json.loads(EXAMPLE_DATA.read_text(encoding="utf-8"))
    lines = [r["instruction"] + r["output"] for r in records]
    return lines + ["system user assistant You are a helpful assistant."] * 5


def make_tokenizer(pad_is_eos: bool):
    """A byte-level BPE tokenizer with ChatML special tokens, trained on the example data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token=None if pad_is_eos else "<|endoftext|>"
    )
    fast.chat_template = CHATML
    return fast


def make_model_dir(path: Path, arch: str, pad_is_eos: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer(pad_is_eos)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    torch.manual_seed(0)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # A small sliding window, so packed rows cross it; layer 2 attends globally.
        cfg = Gemma3TextConfig(
            **common, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"]
        )
        model = Gemma3ForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", pad_is_eos=False)


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    """Gemma 3-shaped model (scaled embeddings, sliding-window layers, tied head)."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_gemma3"), "gemma3", pad_is_eos=False)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Llama-shaped model whose tokenizer has no pad token, so pad == eos (the classic trap)."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_llama"), "llama", pad_is_eos=True)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_qwen) -> Path:
    """A finished run directory: the tiny Qwen2 model after a few LoRA steps (greedy defaults)."""
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = load_config(None, [
        f"model.source={tiny_qwen}", f"data.path={EXAMPLE_DATA}", "data.limit=32",
        "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛", f"train.output_dir={out}",
        "train.max_steps=10", "train.learning_rate=3e-3", "train.batch_size=4", "train.grad_accum=1",
        "train.dtype=float32", "generation.temperature=0", "generation.max_new_tokens=12",
    ])  # fmt: skip
    return run_train(cfg)


@pytest.fixture(autouse=True)
def threads_as_the_test_sets_them(monkeypatch, request):
    """Training and commands default to the cores no other process is busy on *now*; a test keeps
    the thread count it runs with instead (see threads.py). tests/test_hardware.py checks the real
    default."""
    if request.module.__name__ == "test_hardware":
        return
    import torch

    import tunesmith.runtime.hardware as hw

    monkeypatch.setattr(hw, "free_threads", torch.get_num_threads)
