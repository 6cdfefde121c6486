"""Export round trip on the real packaged SmolLM2-135M-Instruct (a llama model from a GGUF wheel).

A few LoRA steps, then the merged model and GGUF f16/q8_0; the GGUF files are loaded back by
transformers (``gguf_file=``) and must answer the check prompts as the fine-tuned model does.
"""

from __future__ import annotations

import pytest

from conftest import EXAMPLE_DATA
from tunesmith.config import load_config
from tunesmith.export import CHECK_PROMPTS, ExportOptions, run_export
from tunesmith.generation import Sampling
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.training import run_train

pytestmark = pytest.mark.real_model


def test_smollm2_exports_to_gguf_that_answers_the_same(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(
        None,
        [
            "model.source=smollm2-135m-instruct",
            f"data.path={EXAMPLE_DATA}",
            "data.limit=16",
            "data.val_fraction=0",
            "data.system_prompt=现在你要扮演皇帝身边的女人--甄嬛",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=3",
            "train.learning_rate=1e-3",
            "train.save_steps=3",
            "train.batch_size=2",
            "train.grad_accum=1",
            # fp32 on every machine: "auto" picks bf16 only where the CPU computes it natively,
            # and the f16 check's greedy answers must not hinge on that
            "train.dtype=float32",
        ],
    )
    run_dir = run_train(cfg)
    out = tmp_path / "export"
    report = run_export(run_dir, out, ExportOptions(formats=("hf", "gguf"), gguf_types=("f16", "q8_0")))
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["gguf-f16"]["greedy_equal"] == len(CHECK_PROMPTS)
    assert checks["gguf-q8_0"]["top1_agreement"] >= 0.9
    lc = checks["gguf-f16"]["extra"]["llama_cpp"]  # the file run in llama.cpp itself
    assert lc["runtime"].startswith("llama.cpp") and lc["passed"], lc
    assert lc["stopped"] == lc["reference_stopped"] and lc["reference_stopped"] != "0/4", lc

    greedy = Sampling(temperature=0, repetition_penalty=1.0, max_new_tokens=16)  # as the export check
    convs = [c for c in CHECK_PROMPTS if len(c) == 1]
    bot = load_chatbot(run_dir, device="cpu")
    want = [g.text for g in bot.generate_batch(convs, greedy)]
    assert [g.text for g in load_chatbot(out, device="cpu").generate_batch(convs, greedy)] == want
    path = out / "gguf" / "model-f16.gguf"
    bot.fmt.tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    bot.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    bot.has_adapter = False
    assert [g.text for g in bot.generate_batch(convs, greedy)] == want
