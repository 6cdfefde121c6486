"""ONNX export (with a KV cache), ONNX Runtime checks, int8 dynamic quantization, Triton layout.

Why ``torch.onnx.export`` and not optimum: optimum-onnx 0.1 (the ONNX exporter of the Hugging Face
ecosystem) pins ``transformers<4.58``, and tunesmith needs transformers 5. optimum's exporter is
itself built on ``torch.onnx.export``; the part it adds for decoder models (flattening the KV cache
into named inputs/outputs) is the small ``_CachedLM`` wrapper below. Inputs and outputs carry the
names of optimum's decoder exports (``past_key_values.N.key`` in, ``present.N.key`` out), so
client code written for those works here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..logs import get_logger
from .common import quiet_loggers, require

log = get_logger(__name__)

OPSET = 18


def _dims(cfg: Any) -> tuple[int, int, int]:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _cached_lm(model: Any) -> Any:
    """Wrap ``model`` so the KV cache goes in and out as flat tensors (what ONNX can express)."""
    import torch
    from transformers.cache_utils import DynamicCache

    n_layers = model.config.num_hidden_layers
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class _CachedLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, input_ids, attention_mask, position_ids, *past):  # noqa: ANN001, ANN202
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(n_layers)]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.lm.config)
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_kw: cache},
            )
            new = getattr(out, "past_key_values", None) or out.cache
            flat = [t for layer in new.layers for t in (layer.keys, layer.values)]
            return (out.logits, *flat)

    return _CachedLM().eval()


def export_onnx(model: Any, path: Path) -> Path:
    """Export a float32 causal LM with a KV cache to ``path`` (weights in one external data file
    beside it when the model is over 1 GiB, because a protobuf file stops at 2 GiB)."""
    import torch

    require("onnx", "onnx")
    require("onnxscript", "onnx")
    n_layers, kv_heads, head_dim = _dims(model.config)
    batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence", "total"))
    b, s, p = 1, 3, 2  # example shapes; every axis is dynamic
    ids = torch.zeros((b, s), dtype=torch.long)
    mask = torch.ones((b, p + s), dtype=torch.long)
    pos = torch.arange(p, p + s).unsqueeze(0)
    cache = tuple(torch.zeros(b, kv_heads, p, head_dim) for _ in range(2 * n_layers))
    shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * n_layers)),
    }
    inputs, outputs = io_names(n_layers)
    big = sum(t.numel() * 4 for t in model.state_dict().values()) > 1 << 30
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
            torch.onnx.export(
                _cached_lm(model),
                (ids, mask, pos, *cache),
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=big,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the message is what the user needs
        raise ExportError(f"ONNX export failed for this {model.config.model_type} model: {e}") from e
    return path


class OrtRunner:
    """An exported ONNX causal LM under ONNX Runtime (CPU), with a KV-cache greedy loop."""

    def __init__(self, path: Path, config: Any, threads: int | None = None):
        import numpy as np

        ort = require("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.n_layers, self.kv_heads, self.head_dim = _dims(config)
        self.inputs, _ = io_names(self.n_layers)
        self.np = np

    def _run(self, ids: list[int], start: int, past: list[Any]) -> list[Any]:
        np = self.np
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, start + len(ids)), dtype=np.int64),
            "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None, :],
        }
        feed.update(zip(self.inputs[3:], past, strict=True))
        return self.session.run(None, feed)

    def _empty(self) -> list[Any]:
        shape = (1, self.kv_heads, 0, self.head_dim)
        return [self.np.zeros(shape, dtype=self.np.float32) for _ in range(2 * self.n_layers)]

    def logits(self, ids: list[int]) -> Any:
        return self._run(ids, 0, self._empty())[0][0]

    def greedy(self, ids: list[int], max_new: int, stop: Any) -> list[int]:
        out = self._run(ids, 0, self._empty())
        tokens: list[int] = []
        pos = len(ids)
        for _ in range(max_new):
            nxt = int(out[0][0, -1].argmax())
            if nxt in stop:
                break
            tokens.append(nxt)
            out = self._run([nxt], pos, out[1:])
            pos += 1
        return tokens


def _nodes_of(path: Path, modules: set[str]) -> list[str]:
    """Names of the graph nodes that the exporter recorded as part of these PyTorch modules."""
    import ast

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = []
    for node in graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        # scopes end with the module path, then the op: [..., "lm.model.layers.3.mlp.down_proj", "linear_6"]
        if len(scopes) >= 2 and scopes[-2].removeprefix("lm.") in modules:
            found.append(node.name)
    return found


def quantize_int8(src: Path, dst: Path, keep_float: list[str] | tuple[str, ...] = ()) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights (per channel) for MatMul, activations
    quantized on the fly. Embeddings, norms and the ``keep_float`` modules' MatMuls stay float."""
    q = require("onnxruntime.quantization", "onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    exclude = _nodes_of(src, set(keep_float)) if keep_float else []
    with quiet_loggers("", "onnx_ir"):  # "": quantize_dynamic logs to the root logger
        q.quantize_dynamic(
            str(src),
            str(dst),
            weight_type=q.QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            nodes_to_exclude=exclude,
            use_external_data_format=(src.parent / (src.name + ".data")).exists(),
        )
    return dst


def triton_name(name: str) -> str:
    """A Triton model name: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "tunesmith"


def triton_config(name: str, n_layers: int, kv_heads: int, head_dim: int) -> str:
    """``config.pbtxt`` for Triton's onnxruntime backend.

    ``max_batch_size: 0`` because the client owns the KV cache: requests of different lengths cannot
    be batched by the server, so the batch axis is part of each shape (``-1`` = any size).
    """
    inputs, outputs = io_names(n_layers)
    cache = [-1, kv_heads, -1, head_dim]
    specs = [("input", n, "TYPE_INT64", [-1, -1]) for n in inputs[:3]]
    specs += [("input", n, "TYPE_FP32", cache) for n in inputs[3:]]
    specs += [("output", "logits", "TYPE_FP32", [-1, -1, -1])]
    specs += [("output", n, "TYPE_FP32", cache) for n in outputs[1:]]
    blocks = {"input": [], "output": []}
    for kind, n, dtype, dims in specs:
        shape = ", ".join(map(str, dims))
        blocks[kind].append(f'  {{\n    name: "{n}"\n    data_type: {dtype}\n    dims: [ {shape} ]\n  }}')
    sep = ",\n"
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        f"input [\n{sep.join(blocks['input'])}\n]\n"
        f"output [\n{sep.join(blocks['output'])}\n]\n"
        "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]\n"
    )


def triton_model_path(repo: Path, name: str) -> Path:
    """Where the ONNX file of Triton model ``name`` lives in repository ``repo``."""
    return repo / name / "1" / "model.onnx"


def write_triton_config(repo: Path, name: str, config: Any) -> Path:
    """Write ``repo/name/config.pbtxt`` for the ONNX file at ``triton_model_path(repo, name)``."""
    path = repo / name / "config.pbtxt"
    path.write_text(triton_config(name, *_dims(config)), encoding="utf-8")
    return path
