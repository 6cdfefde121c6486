"""`tunesmith export`: merged model, GGUF, ONNX + Triton, int8 — each proven to answer the same.

One full export of the tiny LoRA run (all formats, ONNX int8) is shared by the module; the bad-input
tests use the merged format alone, which takes a second or two.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys

import pytest

import tunesmith.cli.main as cli
from tunesmith.cli.export import add_export_parser
from tunesmith.errors import ConfigError, DependencyError, ModelSourceError, RunDirError
from tunesmith.export import CHECK_PROMPTS, ExportError, ExportOptions, run_export
from tunesmith.generation import Sampling
from tunesmith.runtime.chatbot import load_chatbot

GREEDY = Sampling(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
CONVS = [c for c in CHECK_PROMPTS if len(c) == 1]
# The ONNX format needs the export extra (onnx, onnxscript, onnxruntime); CI installs it.
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="pip install 'tunesmith[export]'")


@pytest.fixture(scope="module")
def full_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    formats = ("hf", "gguf", "onnx") if HAS_ONNX else ("hf", "gguf")
    report = run_export(tiny_run, out, ExportOptions(formats=formats, quantize="int8"))
    return out, report


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name] == []


def test_merged_export_matches_the_adapter_model(full_export, tiny_run):
    out, report = full_export
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert all(c["passed"] for c in report["checks"]), report["checks"]
    merged = next(c for c in report["checks"] if c["name"] == "merged")
    assert merged["rel_diff"] < 1e-4 and merged["greedy_equal"] == merged["greedy_total"] == len(
        CHECK_PROMPTS
    )
    assert json.loads((out / "export_report.json").read_text())["checks"] == report["checks"]

    card = json.loads((out / "tunesmith.json").read_text(encoding="utf-8"))
    run_card = json.loads((tiny_run / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["method"] == "merged" and card["export"]["source_method"] == "lora"
    for key in ("system_prompt", "template", "generation", "base_model"):
        assert card[key] == run_card[key], key
    gen = json.loads((out / "generation_config.json").read_text())
    exported, tuned = load_chatbot(out, device="cpu"), load_chatbot(tiny_run, device="cpu")
    assert exported.fmt.eot_id in gen["eos_token_id"] and gen["max_new_tokens"] == 12
    assert exported.card.system_prompt == tuned.card.system_prompt
    assert [g.text for g in exported.generate_batch(CONVS, GREEDY)] == [
        g.text for g in tuned.generate_batch(CONVS, GREEDY)
    ]


def test_an_export_has_no_base_model_to_switch_to(full_export, tiny_run):
    out, _ = full_export
    with pytest.raises(RunDirError, match="merged export.*" + re.escape(str(tiny_run.resolve()))):
        load_chatbot(out, device="cpu", base_only=True)
    bot = load_chatbot(out, device="cpu")
    with pytest.raises(RunDirError, match="no base"):
        bot.answer(CONVS[0], GREEDY, base=True)
    with pytest.raises(ExportError, match="already an export"):
        run_export(out, out.parent / "again")


def test_gguf_loads_back_in_transformers_and_answers_the_same(full_export, tiny_run):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = full_export
    tuned = load_chatbot(tiny_run, device="cpu")
    want = [g.text for g in tuned.generate_batch(CONVS, GREEDY)]
    for qtype in ("f16", "q8_0"):
        path = out / "gguf" / f"model-{qtype}.gguf"
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        assert tok.chat_template == tuned.fmt.template
        tuned.model, tuned.fmt.tokenizer, tuned.has_adapter = model.eval(), tok, False
        assert [g.text for g in tuned.generate_batch(CONVS, GREEDY)] == want, qtype
        check = next(c for c in report["checks"] if c["name"] == f"gguf-{qtype}")
        assert check["extra"]["tokenizer_equal"] and check["extra"]["template_equal"]
    fields = GGUFReader(str(out / "gguf" / "model-q8_0.gguf")).fields
    assert fields["tokenizer.ggml.eot_token_id"].contents() == tuned.fmt.eot_id
    assert fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    assert "general.sampling.top_p" in fields
    lc = next(c for c in report["checks"] if c["name"] == "gguf-f16")["extra"]["llama_cpp"]
    assert lc["runtime"].startswith("llama.cpp") and lc["passed"], lc  # run in llama.cpp itself
    assert lc["same_answers"] == f"{len(CHECK_PROMPTS)}/{len(CHECK_PROMPTS)}", lc
    sizes = {q: (out / "gguf" / f"model-{q}.gguf").stat().st_size for q in ("f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"]
    modelfile = (out / "gguf" / "Modelfile").read_text(encoding="utf-8")  # for `ollama create`
    assert modelfile.startswith("FROM ./model-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f'SYSTEM """{tuned.card.system_prompt}"""' in modelfile and "<|im_start|>{{ .Role }}" in modelfile


def test_gguf_writer_handles_llama_permutation_and_untied_head(tiny_llama, tmp_path):
    """The llama q/k row permutation is the error-prone part of a hand-written GGUF converter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.gguf import load_gguf, write_gguf
    from tunesmith.templates import ChatFormat

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    fmt = ChatFormat(tok)
    assert not model.config.tie_word_embeddings
    path = write_gguf(
        model,
        tok,
        tmp_path / "m.gguf",
        "f32",
        template=fmt.template,
        eot_id=fmt.eot_id,
        generation={},
        name="t",
    )
    back, back_tok = load_gguf(path)
    ids = torch.tensor([fmt.encode_prompt([{"role": "user", "content": "你是谁？ 12345"}])])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-5)
    assert (
        back_tok(fmt.render([{"role": "user", "content": "hi"}]), add_special_tokens=False)["input_ids"]
        == (tok(fmt.render([{"role": "user", "content": "hi"}]), add_special_tokens=False)["input_ids"])
    )


@needs_onnx
def test_onnx_model_runs_in_onnxruntime_with_kv_cache_and_triton_layout(full_export):
    import numpy as np
    import onnxruntime as ort
    import torch

    from tunesmith.export.onnx import io_names

    out, report = full_export
    model_file = out / "onnx" / "tiny" / "1" / "model.onnx"
    config = (out / "onnx" / "tiny" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and 'name: "tiny"' in config
    assert (out / "onnx" / "tiny_int8" / "1" / "model.onnx").is_file()
    sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    for tensor in [*sess.get_inputs(), *sess.get_outputs()]:
        assert f'name: "{tensor.name}"' in config
    assert next(c for c in report["checks"] if c["name"] == "onnx")["rel_diff"] < 1e-4

    # batch of 2, left-padded, then one cached decoding step: same logits as PyTorch
    merged = load_chatbot(out, device="cpu").model
    n_layers = merged.config.num_hidden_layers
    inputs, _ = io_names(n_layers)
    ids = np.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]], dtype=np.int64)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=np.int64)
    pos = np.clip(mask.cumsum(-1) - 1, 0, None)
    kv = merged.config.num_key_value_heads
    head_dim = (
        getattr(merged.config, "head_dim", None)
        or merged.config.hidden_size // merged.config.num_attention_heads
    )
    empty = {n: np.zeros((2, kv, 0, head_dim), dtype=np.float32) for n in inputs[3:]}
    first = sess.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **empty})
    step = np.array([[13], [14]], dtype=np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    pos2 = pos[:, -1:] + 1
    second = sess.run(
        None,
        {
            "input_ids": step,
            "attention_mask": mask2,
            "position_ids": pos2,
            **dict(zip(inputs[3:], first[1:], strict=True)),
        },
    )
    full_ids = torch.tensor(np.concatenate([ids, step], axis=1))
    with torch.no_grad():
        ref = merged(
            input_ids=full_ids,
            attention_mask=torch.tensor(mask2),
            position_ids=torch.tensor(np.concatenate([pos, pos2], axis=1)),
        ).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(first[0][real] - ref[:, :5][real]).max() < 1e-4
    assert np.abs(second[0][:, 0] - ref[:, 5]).max() < 1e-4


@needs_onnx
def test_int8_is_measured_against_the_float_model(full_export):
    _, report = full_export
    q = report["quantization"]
    assert q["method"].startswith("onnxruntime")
    assert q["size_bytes"]["int8"] < q["size_bytes"]["float"]
    assert q["tokens_per_s"]["float"] > 0 and q["tokens_per_s"]["int8"] > 0 and q["speedup"] > 0
    assert abs(q["perplexity_change_pct"]) < 5
    assert "zhenhuan_roleplay.json" in q["eval_data"]
    assert next(c for c in report["checks"] if c["name"] == "onnx-int8")["top1_agreement"] >= 0.8


def test_int8_keeps_layers_with_activation_outliers_float(tiny_qwen, full_export):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.export.measure import outlier_layers
    from tunesmith.modeling import quantize_int8

    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen)).eval()
    with torch.no_grad():  # one huge MLP channel, like the "massive activations" of real small LLMs
        model.model.layers[1].mlp.up_proj.weight[3] *= 2000
        model.model.layers[1].mlp.gate_proj.weight[3] *= 2000
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    keep = outlier_layers(model, prompts, 100.0)
    assert keep == ["model.layers.1.mlp.down_proj"]
    assert outlier_layers(model, prompts, None) == []
    q = quantize_int8(model, keep)
    assert type(q.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert type(q.model.layers[0].mlp.down_proj) is not torch.nn.Linear
    if HAS_ONNX:
        from tunesmith.export.onnx import _nodes_of

        onnx_file = full_export[0] / "onnx" / "tiny" / "1" / "model.onnx"
        assert len(_nodes_of(onnx_file, {"model.layers.1.mlp.down_proj", "lm_head"})) == 2


def test_torch_int8_export_is_quantized_when_loaded_on_cpu(tiny_run, tmp_path):
    out = tmp_path / "int8"
    report = run_export(tiny_run, out, ExportOptions(quantize="int8", eval_records=8))
    q = report["quantization"]
    assert q["method"].startswith("torch") and q["size_ratio"] < 1
    bot = load_chatbot(out, device="cpu")
    assert bot.card.export["quantize"] == "int8"
    assert any("quantized" in type(m).__module__ for m in bot.model.modules())
    assert bot.answer(CONVS[0], GREEDY)


def test_bfloat16_export_is_half_the_size_and_close(full_export, tiny_run, tmp_path):
    out = tmp_path / "bf16"
    report = run_export(tiny_run, out, ExportOptions(dtype="bfloat16"))
    merged = report["checks"][0]
    assert merged["name"] == "merged" and merged["passed"] and merged["rel_diff"] < 5e-2
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    fp32 = (full_export[0] / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.6 * fp32


# --- bad input: a clear error and nothing half-written -------------------------------------------


def test_non_empty_output_is_refused(tiny_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        run_export(tiny_run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_base_model_is_a_clear_error(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    card["base_model"]["source"] = str(tmp_path / "gone")
    (run / "tunesmith.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelSourceError, match="gone"):
        run_export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_missing_extra_names_what_to_install(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(DependencyError, match="pip install"):
        run_export(tiny_run, tmp_path / "out", ExportOptions(formats=("hf", "onnx")))
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_unknown_options_are_reported_together(tiny_run, tmp_path):
    with pytest.raises(ConfigError) as e:
        run_export(tiny_run, tmp_path / "o", ExportOptions(formats=("hf", "tflite"), gguf_types=("q4_k",)))
    assert "tflite" in str(e.value) and "q4_k" in str(e.value)


def test_failed_check_or_interrupt_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="does not answer like"):
        run_export(tiny_run, tmp_path / "out", ExportOptions(tolerance=-1.0))
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)

    import tunesmith.export.run as export_run

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_run, "write_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_export(tiny_run, tmp_path / "out", ExportOptions(formats=("hf", "gguf")))
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


# --- command line ---------------------------------------------------------------------------------


@pytest.fixture
def main(monkeypatch):
    """tunesmith.cli.main.main with the export subcommand registered (a no-op once cli.py wires it in)."""
    original = cli.build_parser

    def build():
        parser = original()
        sub = parser._subparsers._group_actions[0]
        if "export" not in sub.choices:
            add_export_parser(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    return cli.main


def test_cli_export_then_chat_with_the_export(main, tiny_run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(tiny_run), "-o", str(out), "--merge"]) == 0
    printed = capsys.readouterr().out
    assert "merged" in printed and "ok" in printed and f"tunesmith chat {out.resolve()}" in printed
    assert main(["chat", str(out), "--prompt", "你是谁？", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["chat", str(out), "--prompt", "你是谁？", "--compare"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["export", str(tiny_run), "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "x"), "--format", "hf,tflite"]) == 2
    assert "tflite" in capsys.readouterr().err


def test_a_gguf_that_does_not_stop_in_llama_cpp_fails_the_check(monkeypatch):
    from tunesmith.export import llamacpp

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(0x4E00 + i) for i in ids)

    reference = [[1, 2], [3, 4, 5, 6]]  # the first stopped after two tokens; the second ran to the limit
    monkeypatch.setattr(
        llamacpp, "greedy_in_llamacpp", lambda *a, **k: [("\u4e01\u4e02", True), ("x", False)]
    )
    ok = llamacpp.llamacpp_check("m.gguf", [[0], [0]], reference, 4, Tok())
    assert ok["passed"] and ok["same_answers"] == "1/2" and ok["reference_stopped"] == "1/2"
    monkeypatch.setattr(
        llamacpp, "greedy_in_llamacpp", lambda *a, **k: [("\u4e01\u4e02", False), ("x", False)]
    )
    assert not llamacpp.llamacpp_check("m.gguf", [[0], [0]], reference, 4, Tok())["passed"]
