"""run_export: a run dir → a merged model directory (+ GGUF, ONNX, int8), each format checked.

The output is built in a temporary directory beside the target and renamed into place only when
every check has passed, so a failed or interrupted export leaves nothing that looks finished.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError
from ..files import apply_umask, atomic_write_json
from ..logs import get_logger
from ..modeling import load_model, quantize_int8
from ..runcard import EXPORTED, RunCard, read_run_card, write_run_card
from ..runtime.chatbot import Chatbot, load_chatbot
from . import llamacpp
from .checks import TorchRunner, compare, reference_outputs
from .common import CHECK_PROMPTS, CheckResult, require
from .gguf import GGUF_TYPES, load_gguf, ollama_modelfile, source_gguf_pre, write_gguf
from .measure import compare_int8, eval_examples, onnx_sizes, outlier_layers, torch_size

log = get_logger(__name__)

FORMATS = ("hf", "gguf", "onnx")
QUANTIZE = ("int8",)
DTYPES = ("float32", "bfloat16", "float16")
REPORT = "export_report.json"

# What each check is held to: (relative logit tolerance, greedy answers must be identical,
# minimum top-1 agreement). The tolerance is max |Δlogit| / max(1, max |logit|); --tolerance
# replaces it where there is one. float32 paths differ only in summation order; 16-bit weights
# round each weight to ~3 significant digits; the int8 formats are held to top-1 agreement only:
# a flipped near-tie is expected, a layout bug (wrong permutation, wrong tensor) drops it to chance.
LIMITS: dict[str, tuple[float | None, bool, float | None]] = {
    "float32": (1e-4, True, None),
    "f16": (5e-2, True, None),  # GGUF f16 is what llama.cpp users run: its answers must match
    "half": (5e-2, False, 0.9),  # merged safetensors in bfloat16 / float16
    "q8_0": (None, False, 0.9),
    "int8": (None, False, 0.5),  # activations are quantized too; SmolLM2 measures ~0.6-0.8
}


@dataclass
class ExportOptions:
    """What to export. Defaults: the merged Hugging Face model in float32, nothing else.

    Attributes:
        formats: any of "hf" (always written), "gguf", "onnx".
        gguf_types: GGUF tensor types, any of "f32", "f16", "q8_0".
        quantize: "int8" for CPU dynamic quantization (ONNX Runtime with "onnx", else PyTorch).
        dtype: dtype of the merged safetensors.
        tolerance: relative logit tolerance of the lossless checks (default per dtype).
        eval_data: records to measure perplexity on (default: the run's own data file).
        eval_records: how many of them.
        triton_name: Triton model name (default: the output directory's name).
        check_tokens: greedy tokens compared per check prompt.
        int8_outlier_ratio: with ``quantize``, Linear layers whose input peak/mean |activation|
            exceeds this on the check prompts stay float (None: quantize every one).
    """

    formats: tuple[str, ...] = ("hf",)
    gguf_types: tuple[str, ...] = ("f16", "q8_0")
    quantize: str | None = None
    dtype: str = "float32"
    tolerance: float | None = None
    eval_data: str | None = None
    eval_records: int = 32
    triton_name: str | None = None
    check_tokens: int = 16
    int8_outlier_ratio: float | None = 100.0


def _validate(run_dir: Path, out: Path, opts: ExportOptions) -> RunCard:
    choices = (("format", opts.formats, FORMATS), ("GGUF type", opts.gguf_types, GGUF_TYPES))
    problems = [
        f"unknown {what} {v!r} (choose from {', '.join(valid)})"
        for what, values, valid in choices
        for v in values
        if v not in valid
    ]
    if opts.quantize not in (None, *QUANTIZE):
        problems.append(f"unknown quantization {opts.quantize!r} (choose from {', '.join(QUANTIZE)})")
    if opts.dtype not in DTYPES:
        problems.append(f"unknown dtype {opts.dtype!r} (choose from {', '.join(DTYPES)})")
    if problems:
        raise ConfigError(problems, "export options")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose another -o or remove it first")
    card = read_run_card(run_dir)
    if card.is_export:
        raise ExportError(f"{run_dir} is already an export; export the run directory it came from")
    if "onnx" in opts.formats:  # fail before any heavy work
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "onnx")
    return card


def _merged(model: Any) -> Any:
    """The adapter folded into the base weights (a full-weight run is already merged)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def _generation_config(bot: Chatbot) -> Any:
    """generation_config.json with the run card's defaults and stop tokens (vLLM and
    transformers read it)."""
    from transformers import GenerationConfig

    g, tok = bot.card.generation, bot.fmt.tokenizer
    kw: dict[str, Any] = dict(
        eos_token_id=bot.stop_ids(),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        max_new_tokens=g.get("max_new_tokens"),
        repetition_penalty=g.get("repetition_penalty"),
    )
    if (g.get("temperature") or 0) > 0:
        kw.update(do_sample=True, temperature=g["temperature"], top_p=g.get("top_p"), top_k=g.get("top_k"))
    return GenerationConfig(**{k: v for k, v in kw.items() if v is not None})


class _Export:
    """One export in progress: the reference outputs, the merged model, the checks so far."""

    def __init__(self, run_dir: Path, out: Path, tmp: Path, bot: Chatbot, opts: ExportOptions):
        self.run_dir, self.out, self.tmp, self.bot, self.opts = run_dir, out, tmp, bot, opts
        self.prompts = [bot.fmt.encode_prompt(bot.with_system(c)) for c in CHECK_PROMPTS]
        self.stop = bot.stop_ids()
        log.info("reference: logits and greedy answers of the adapter model on %d prompts", len(self.prompts))
        self.refs = reference_outputs(TorchRunner(bot.model), self.prompts, self.stop, opts.check_tokens)
        self.model = _merged(bot.model)
        self.model.eval()
        self.checks: list[CheckResult] = []
        self.quantization: dict[str, Any] | None = None
        self.keep_float: list[str] = []
        if opts.quantize == "int8":
            self.keep_float = outlier_layers(self.model, self.prompts, opts.int8_outlier_ratio)
            log.info("int8: %d Linear layers with activation outliers stay float", len(self.keep_float))

    def check(self, name: str, runner: Any, kind: str = "float32") -> CheckResult:
        """Compare ``runner`` with the reference, held to ``LIMITS[kind]``."""
        tolerance, greedy, min_top1 = LIMITS[kind]
        if tolerance is not None and self.opts.tolerance is not None:
            tolerance = self.opts.tolerance
        limits = dict(tolerance=tolerance, require_greedy=greedy, min_top1=min_top1)
        result = compare(name, self.refs, runner, self.prompts, self.stop, **limits)
        log.info(
            "check %s: %s (max |Δlogit| %.2e, rel %.2e, top-1 agreement %.3f, greedy %d/%d equal)",
            name,
            "ok" if result.passed else "FAILED",
            result.max_abs_diff,
            result.rel_diff,
            result.top1_agreement,
            result.greedy_equal,
            result.greedy_total,
        )
        self.checks.append(result)
        return result

    def examples(self) -> tuple[list[Any], str]:
        tok = self.bot.fmt.tokenizer
        fallback = [
            [*conv, {"role": "assistant", "content": tok.decode(ans, skip_special_tokens=True)}]
            for conv, ans in zip(CHECK_PROMPTS, self.refs["greedy"], strict=True)
        ]
        path = self.opts.eval_data or self.bot.card.data.get("path")
        return eval_examples(self.bot, path, self.opts.eval_records, fallback)

    def gguf(self) -> None:
        known_pre = source_gguf_pre(self.bot.card.base_model)
        for qtype in self.opts.gguf_types:
            path = self.tmp / "gguf" / f"model-{qtype}.gguf"
            log.info("writing %s", path.name)
            write_gguf(
                self.model, self.bot.fmt.tokenizer, path, qtype,
                template=self.bot.fmt.template, eot_id=self.bot.fmt.eot_id,
                generation=self.bot.card.generation, name=self.out.name, known_pre=known_pre,
            )  # fmt: skip
            model, tok = load_gguf(path)
            kind = "float32" if qtype == "f32" else qtype
            result = self.check(f"gguf-{qtype}", TorchRunner(model), kind)
            result.extra.update(self.same_tokenizer(tok))
            same = result.extra["tokenizer_equal"] and result.extra["template_equal"]
            result.passed = result.passed and same
            del model
            self.in_llamacpp(path, result)
        card, fmt = self.bot.card, self.bot.fmt
        smallest = min(self.opts.gguf_types, key=("q8_0", "f16", "f32").index)
        gguf_file = f"model-{smallest}.gguf"
        modelfile = ollama_modelfile(
            gguf_file, fmt.template, fmt.eot_token, card.system_prompt, card.generation
        )
        (self.tmp / "gguf" / "Modelfile").write_text(modelfile, encoding="utf-8")

    def in_llamacpp(self, path: Path, result: CheckResult) -> None:
        """Run the GGUF file in llama.cpp itself: same greedy answers, and stops where it should."""
        if not llamacpp.available():
            result.extra["llama_cpp"] = "not checked: pip install xllamacpp (or 'tunesmith[export]')"
            log.info("%s: not run in llama.cpp (xllamacpp is not installed)", path.name)
            return
        import torch

        lc = llamacpp.llamacpp_check(
            path,
            self.prompts,
            self.refs["greedy"],
            self.refs["max_new"],
            self.bot.fmt.tokenizer,
            torch.get_num_threads(),
        )
        result.extra["llama_cpp"] = lc
        result.passed = result.passed and lc["passed"]
        log.info(
            "%s in llama.cpp: %s greedy answers equal, stopped %s (the merged model: %s)",
            path.name,
            lc["same_answers"],
            lc["stopped"],
            lc["reference_stopped"],
        )

    def same_tokenizer(self, tok: Any) -> dict[str, bool]:
        """Whether a tokenizer read back from an export encodes the check prompts the same way."""
        fmt = self.bot.fmt
        texts = [fmt.render(self.bot.with_system(c), add_generation_prompt=True) for c in CHECK_PROMPTS]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        return {"tokenizer_equal": ids == self.prompts, "template_equal": tok.chat_template == fmt.template}

    def onnx(self) -> None:
        from .onnx import OrtRunner, export_onnx, triton_model_path, triton_name, write_triton_config
        from .onnx import quantize_int8 as ort_int8

        repo, name = self.tmp / "onnx", triton_name(self.opts.triton_name or self.out.name)
        path = triton_model_path(repo, name)
        log.info("exporting ONNX (torch.onnx.export, dynamo) to onnx/%s", name)
        export_onnx(self.model, path)
        write_triton_config(repo, name, self.model.config)
        runner = OrtRunner(path, self.model.config)
        self.check("onnx", runner)
        if self.opts.quantize == "int8":
            qpath = triton_model_path(repo, f"{name}_int8")
            ort_int8(path, qpath, self.keep_float)
            write_triton_config(repo, f"{name}_int8", self.model.config)
            qrunner = OrtRunner(qpath, self.model.config)
            self.check("onnx-int8", qrunner, "int8")
            examples, origin = self.examples()
            self.quantization = compare_int8(
                "onnxruntime dynamic int8 (MatMul/Gemm weights per channel)",
                runner, qrunner, onnx_sizes(path, qpath), examples, self.prompts[0],
            )  # fmt: skip
            self.quantization.update(eval_data=origin, float_layers=self.keep_float)

    def torch_int8(self) -> None:
        q = quantize_int8(copy.deepcopy(self.model), self.keep_float)
        runner = TorchRunner(q)
        self.check("torch-int8", runner, "int8")
        examples, origin = self.examples()
        sizes = (torch_size(self.model), torch_size(q))
        self.quantization = compare_int8(
            "torch dynamic int8 (Linear layers), applied at load on CPU",
            TorchRunner(self.model), runner, sizes, examples, self.prompts[0],
        )  # fmt: skip
        self.quantization.update(eval_data=origin, float_layers=self.keep_float)

    def hf(self) -> None:
        import torch

        self.model.to(getattr(torch, self.opts.dtype))
        self.model.generation_config = _generation_config(self.bot)
        self.model.save_pretrained(self.tmp)
        self.bot.fmt.tokenizer.save_pretrained(self.tmp)
        reloaded = load_model(self.tmp, "float32", "cpu").eval()
        self.check("merged", TorchRunner(reloaded), "float32" if self.opts.dtype == "float32" else "half")
        del reloaded


def _files(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_size for f in sorted(root.rglob("*")) if f.is_file()}


def _finish(ex: _Export, card: RunCard, started: float) -> dict[str, Any]:
    failed = [c for c in ex.checks if not c.passed]
    if failed:
        lines = "\n".join(f"  - {c.name}: {c.as_dict()}" for c in failed)
        raise ExportError(
            f"the exported model does not answer like the fine-tuned one; nothing was written to {ex.out}.\n"
            f"{lines}\n(--tolerance loosens the logit limit of float checks)"
        )
    formats = ["hf", *(f for f in ex.opts.formats if f != "hf")]
    report = {
        "source_run": str(ex.run_dir.resolve()),
        "output": str(ex.out.resolve()),
        "formats": formats,
        "dtype": ex.opts.dtype,
        "checks": [c.as_dict() for c in ex.checks],
        "quantization": ex.quantization,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(ex.tmp / REPORT, report)
    export = {
        "source_run": report["source_run"],
        "source_method": card.method,
        "formats": formats,
        "dtype": ex.opts.dtype,
        "quantize": "int8" if ex.opts.quantize == "int8" and "onnx" not in formats else None,
        "int8_float_layers": ex.keep_float,
        "files": _files(ex.tmp),
        "checks_passed": True,
        "report": REPORT,
    }
    new = dataclasses.replace(card, method=EXPORTED, adapter=".", tokenizer=".", export=export)
    write_run_card(ex.tmp, new)  # written last, like a run dir's
    return report


def run_export(run_dir: str | Path, out: str | Path, opts: ExportOptions | None = None) -> dict[str, Any]:
    """Export a finished run as a merged model directory, plus the formats ``opts`` asks for.

    Every format is loaded back and compared with the adapter model on a fixed batch (logits and
    greedy answers); the export fails, writing nothing, if one does not match.

    Returns:
        The export report (also written to ``OUT/export_report.json``).

    Raises:
        ConfigError: unknown format, GGUF type, quantization or dtype.
        ExportError: ``out`` is not empty, the run is itself an export, a format cannot express this
            model, or a check failed.
        RunDirError / ModelSourceError: the run is unfinished, or its base model cannot be found.
        DependencyError: a format's optional package is not installed.
    """
    opts = opts or ExportOptions()
    run_dir, out = Path(run_dir), Path(out)
    card = _validate(run_dir, out, opts)
    started = time.perf_counter()
    bot = load_chatbot(run_dir, device="cpu", dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        ex = _Export(run_dir, out, tmp, bot, opts)
        if "gguf" in opts.formats:
            ex.gguf()
        if "onnx" in opts.formats:
            ex.onnx()
        elif opts.quantize == "int8":
            ex.torch_int8()
        ex.hf()  # last: it casts the merged model to the requested dtype
        report = _finish(ex, card, started)
        if out.exists():
            out.rmdir()  # empty, checked above
        apply_umask(tmp)  # safetensors and ONNX write through private temp files
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export finished: %s", out)
    return report
