"""vLLM pre-flight (pure Python, always runs) and the vLLM backend (only where vllm is installed)."""

import importlib.util
import json
import os
import shutil

import pytest

from tunesmith.errors import DependencyError, RunDirError
from tunesmith.serving.vllm_preflight import check_adapter, preflight, safetensors_keys, vllm_rank

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def adapter(tmp_path, name="a", weights=("q_proj", "v_proj"), extra_keys=(), **cfg):
    """An adapter directory with a config and a header-only-correct safetensors file."""
    import numpy as np
    from safetensors.numpy import save_file

    d = tmp_path / name
    d.mkdir()
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": list(weights), **cfg}
    (d / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for m in weights:
        for ab in ("A", "B"):
            tensors[f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight"] = np.zeros(
                (2, 2), "float32"
            )
    for k in extra_keys:
        tensors[k] = np.zeros((2, 2), "float32")
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


def test_a_plain_lora_adapter_is_loadable(tmp_path):
    v = check_adapter("a", adapter(tmp_path, r=16, use_rslora=True))
    assert v.loadable, v.problems
    assert v.rank == 16 and any("rsLoRA" in n for n in v.notes)


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern"),
        ({"r": 1024}, "rank 1024"),
        ({"r": 0}, "not a positive integer"),
        ({"peft_type": "IA3"}, "LoRA adapters only"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
        ({"target_modules": ["q_proj", "conv1d"]}, "conv1d"),
        ({"target_modules": []}, "target_modules"),
        ({"trainable_token_indices": [5, 6]}, "trainable_token_indices"),
    ],
)
def test_each_unsupported_feature_is_named(tmp_path, cfg, fragment):
    v = check_adapter("a", adapter(tmp_path, **cfg))
    assert not v.loadable
    assert any(fragment in p for p in v.problems), v.problems


def test_full_embedding_weights_in_the_file_are_refused(tmp_path):
    d = adapter(tmp_path, extra_keys=["base_model.model.lm_head.weight"])
    v = check_adapter("a", d)
    assert not v.loadable and "lm_head" in v.problems[0]
    assert "base_model.model.lm_head.weight" in safetensors_keys(d / "adapter_model.safetensors")


def test_extended_vocabulary_and_missing_files(tmp_path):
    assert not check_adapter("a", adapter(tmp_path), tokenizer_len=600, base_vocab=500).loadable
    assert check_adapter("a", adapter(tmp_path, name="b"), tokenizer_len=500, base_vocab=500).loadable
    empty = tmp_path / "empty"
    empty.mkdir()
    v = check_adapter("e", empty)
    assert not v.loadable and "adapter_config.json" in v.problems[0]


def test_engine_is_sized_from_the_loadable_adapters(tmp_path):
    rep = preflight({"a": adapter(tmp_path, "a", r=8), "b": adapter(tmp_path, "b", r=24)})
    assert rep.ok and rep.max_lora_rank == 32 and rep.max_loras == 2 and rep.max_cpu_loras == 2
    assert [vllm_rank(r) for r in (1, 2, 8, 9, 320, 321, 512, 513)] == [1, 8, 8, 16, 320, 512, 512, None]
    bad = preflight({"a": adapter(tmp_path, "c"), "d": adapter(tmp_path, "d", use_dora=True)})
    assert not bad.ok and "CANNOT LOAD" in bad.to_text() and bad.as_dict()["ok"] is False


def test_preflight_of_a_real_run(tiny_run, tmp_path):
    from tunesmith.serving.vllm_backend import check_runs

    report, bots, _ = check_runs({"tiny": tiny_run})
    assert report.ok, report.to_text()
    assert report.max_lora_rank == 8 and set(bots) == {"tiny"}
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    card = json.loads((other / "tunesmith.json").read_text())
    card["base_model"]["content_hash"] = "f" * 64
    (other / "tunesmith.json").write_text(json.dumps(card))
    with pytest.raises(RunDirError, match="same base model"):
        check_runs({"tiny": tiny_run, "other": other})


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_without_vllm_the_backend_says_how_to_install_it(tiny_run):
    from tunesmith.serving.server import build_backend

    with pytest.raises(DependencyError, match="pip install vllm"):
        build_backend({"tiny": tiny_run}, backend="vllm")


def test_vllm_computes_in_the_transformers_backends_dtype(monkeypatch):
    """vLLM alone downcasts float32 checkpoints to bfloat16 on CPUs, and greedy answers drift."""
    import tunesmith.serving.vllm_backend as vb

    assert vb.engine_dtype(None, "cpu") == "float32"
    assert vb.engine_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(vb, "pick_dtype", lambda dtype, device: "bfloat16")
    assert vb.engine_dtype("auto", "cpu") == "bfloat16"  # measured, as train.dtype auto


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """A run on a tiny Qwen2 whose head size (64) vLLM's CPU attention supports."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import EXAMPLE_DATA, make_tokenizer
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    root = tmp_path_factory.mktemp("vllm")
    tok = make_tokenizer(False)
    shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
    cfg = Qwen2Config(
        vocab_size=len(tok), num_key_value_heads=1, max_position_embeddings=512, **shape,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return run_train(load_config(None, [
        f"model.source={root / 'base'}", f"data.path={EXAMPLE_DATA}", "data.limit=16", "data.val_fraction=0",
        "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛", f"train.output_dir={root / 'run'}",
        "train.max_steps=5", "train.learning_rate=3e-3", "train.batch_size=4", "train.grad_accum=1",
        "train.dtype=float32", "generation.temperature=0", "generation.max_new_tokens=12",
    ]))  # fmt: skip


@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
def test_vllm_backend_answers_as_the_transformers_backend(vllm_run, monkeypatch):  # pragma: no cover
    """Greedy answers of the adapter and of the base model match across the two backends."""
    import asyncio

    from tunesmith.generation import Sampling
    from tunesmith.serving.backends import GenRequest
    from tunesmith.serving.server import build_backend

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    greedy = Sampling(temperature=0, max_new_tokens=12)
    q = [{"role": "user", "content": "你是谁？"}]

    def answers(backend):
        async def ask(name):
            m = backend.models[name]
            events = [ev async for ev in backend.generate(GenRequest(m, m.chat_prompt(q), greedy))]
            return "".join(e.text for e in events), events[-1].finish, events[-1].completion_tokens

        async def both():
            backend.start()
            return [await ask("tiny"), await ask("base")]

        try:
            return asyncio.run(both())
        finally:
            backend.close()

    # what `tunesmith serve --backend vllm --max-model-len 256` passes: no dtype, no eager mode
    from_vllm = answers(build_backend({"tiny": vllm_run}, backend="vllm", max_model_len=256))
    from_transformers = answers(build_backend({"tiny": vllm_run}, device="cpu"))
    assert from_vllm == from_transformers


def test_vllm_metrics_report_tokens_and_running_requests_per_window():
    from tunesmith.serving.vllm_backend import StepMeter

    now = [0.0]
    meter = StepMeter(window=1.0, clock=lambda: now[0])
    seen = []
    meter.on_batch = lambda rows, tokens, seconds: seen.append((rows, tokens, seconds))
    for t, running in [(0.2, 3), (0.5, 8), (0.9, 8)]:
        now[0] = t
        meter.add(8, running)
    assert seen == []  # the window is not over
    now[0] = 1.25
    meter.add(8, 6)
    assert seen == [(8, 32, 1.25)]  # most requests at once, tokens in the window, its length
