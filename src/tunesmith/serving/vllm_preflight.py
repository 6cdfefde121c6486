"""Can vLLM load these LoRA adapters? A pure-Python check of adapter_config.json and the weights' names.

vLLM serves LoRA adapters through ``LoRARequest`` but supports fewer adapter features than PEFT:
its engine is sized once (``max_lora_rank`` from a fixed set of ranks, ``max_loras``), and it
refuses DoRA, ``modules_to_save``, LoRA biases and per-module rank or alpha patterns, and (since
vLLM 0.12) LoRA on ``embed_tokens``/``lm_head`` or a resized vocabulary. This check says so for
each adapter *before* an engine spends its start-up time, without importing vllm or torch.
The rules follow vLLM's ``lora/peft_helper.py`` and ``config/lora.py``; they are written out here
because vLLM only applies them while loading, inside the engine.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# vLLM's LoRAConfig.max_lora_rank accepts only these values.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Linear layers vLLM can put LoRA on in the decoder families tunesmith trains (Llama, Qwen2/3,
# Mistral, Gemma, Phi-3's packed names). Anything else is reported, not silently dropped.
VLLM_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj"}
)
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out"})


@dataclass
class AdapterVerdict:
    """Whether vLLM can load one adapter, and why not."""

    name: str
    path: str
    loadable: bool
    rank: int | None = None
    target_modules: list[str] | str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Preflight:
    """The verdicts, and the engine settings that fit the loadable adapters."""

    verdicts: list[AdapterVerdict]
    max_lora_rank: int | None
    max_loras: int
    max_cpu_loras: int

    @property
    def ok(self) -> bool:
        return all(v.loadable for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def to_text(self) -> str:
        lines = []
        for v in self.verdicts:
            head = "ok" if v.loadable else "CANNOT LOAD"
            lines.append(f"{v.name}: {head} (rank {v.rank}, modules {v.target_modules})")
            lines += [f"  - {p}" for p in v.problems] + [f"  · {n}" for n in v.notes]
        lines.append(
            f"engine: max_lora_rank={self.max_lora_rank} max_loras={self.max_loras} "
            f"max_cpu_loras={self.max_cpu_loras}"
        )
        return "\n".join(lines)


def vllm_rank(rank: int) -> int | None:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank`` (None: too large)."""
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names in a .safetensors file, read from its JSON header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 1024 * 1024:
            raise ValueError(f"{path}: implausible safetensors header size {size}")
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def check_adapter(
    name: str, adapter_dir: str | Path, tokenizer_len: int | None = None, base_vocab: int | None = None
) -> AdapterVerdict:
    """Check one PEFT adapter directory against what vLLM loads.

    Args:
        name: the served name.
        adapter_dir: the directory holding adapter_config.json and the weights.
        tokenizer_len: the run tokenizer's length, and ``base_vocab`` the base model's
            ``vocab_size``: a tokenizer with more tokens than the base embeddings means an
            extended vocabulary, which vLLM cannot serve from an adapter.
    """
    adapter_dir = Path(adapter_dir)
    v = AdapterVerdict(name, str(adapter_dir), loadable=False)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        v.problems.append(f"no readable adapter_config.json ({e})")
        return v
    v.rank, v.target_modules = cfg.get("r"), cfg.get("target_modules")
    v.problems += _config_problems(cfg)
    v.problems += _module_problems(cfg.get("target_modules"), v.notes)
    v.problems += _weight_problems(adapter_dir)
    if tokenizer_len and base_vocab and tokenizer_len > base_vocab:
        v.problems.append(
            f"the run's tokenizer has {tokenizer_len} tokens but the base model's embeddings {base_vocab}: "
            "an extended vocabulary; merge the adapter to serve it"
        )
    if cfg.get("use_rslora"):
        v.notes.append("rsLoRA scaling (alpha/sqrt(r)): supported")
    v.loadable = not v.problems
    return v


def _config_problems(cfg: dict[str, Any]) -> list[str]:
    out = []
    peft_type = str(cfg.get("peft_type", "")).upper()
    if peft_type != "LORA":
        return [f"vLLM serves LoRA adapters only; this one is {peft_type or 'of unknown type'}"]
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        out.append(f"rank r={r!r} is not a positive integer")
    elif vllm_rank(r) is None:
        out.append(f"rank {r} is above vLLM's largest max_lora_rank ({VLLM_MAX_LORA_RANKS[-1]})")
    if cfg.get("use_dora"):
        out.append("DoRA (use_dora) is not supported by vLLM; merge the adapter to serve it")
    if cfg.get("modules_to_save"):
        out.append(
            f"modules_to_save={cfg['modules_to_save']}: vLLM loads only LoRA matrices, so these fully "
            "trained modules would be lost; merge the adapter into the base model to serve it"
        )
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        out.append("LoRA bias terms (bias / lora_bias) are not supported by vLLM")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            out.append(f"{key} is set: vLLM uses one rank and alpha for every module")
    if cfg.get("trainable_token_indices"):
        out.append("trainable_token_indices changes embedding rows; vLLM cannot apply that")
    return out


def _module_problems(targets: Any, notes: list[str]) -> list[str]:
    if isinstance(targets, str):
        if targets == "all-linear":
            notes.append("target_modules='all-linear': checked against the weights' names")
        else:
            notes.append(f"target_modules is a pattern ({targets!r}): checked against the weights' names")
        return []
    if not isinstance(targets, list) or not targets:
        return ["target_modules is missing or empty"]
    leaves = {str(t).rsplit(".", 1)[-1] for t in targets}
    out = []
    if leaves & EMBEDDING_MODULES:
        out.append(
            f"LoRA on {sorted(leaves & EMBEDDING_MODULES)}: current vLLM has no LoRA on embeddings or "
            "lm_head; merge the adapter to serve it"
        )
    unknown = sorted(leaves - VLLM_LORA_MODULES - EMBEDDING_MODULES)
    if unknown:
        out.append(f"target modules {unknown} are not layers vLLM puts LoRA on ({sorted(VLLM_LORA_MODULES)})")
    return out


def _weight_problems(adapter_dir: Path) -> list[str]:
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        if (adapter_dir / "adapter_model.bin").is_file():
            return []  # vLLM reads .bin too; names are not checked without torch
        return ["no adapter weights (adapter_model.safetensors) found"]
    try:
        keys = [k for f in files for k in safetensors_keys(f)]
    except (OSError, ValueError, struct.error) as e:
        return [f"unreadable adapter weights ({e})"]
    full = sorted({k for k in keys if "lora_" not in k and any(m in k for m in EMBEDDING_MODULES)})
    if full:
        return [
            f"the weights hold full embedding/lm_head tensors ({full[0]}, ...): a resized vocabulary "
            "or modules_to_save; vLLM cannot load them"
        ]
    leaves = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys if ".lora_" in k}
    odd = sorted(leaves - VLLM_LORA_MODULES - EMBEDDING_MODULES)
    return [f"LoRA weights on {odd}: not layers vLLM puts LoRA on"] if odd else []


def preflight(
    adapters: dict[str, str | Path],
    tokenizer_lens: dict[str, int] | None = None,
    base_vocab: int | None = None,
) -> Preflight:
    """Check every adapter (name → adapter dir) and size the engine for the loadable ones."""
    lens = tokenizer_lens or {}
    verdicts = [check_adapter(name, path, lens.get(name), base_vocab) for name, path in adapters.items()]
    ranks = [v.rank for v in verdicts if v.loadable and isinstance(v.rank, int)]
    loadable = sum(v.loadable for v in verdicts)
    return Preflight(
        verdicts,
        max_lora_rank=vllm_rank(max(ranks)) if ranks else None,
        max_loras=max(1, min(loadable, 8)),
        max_cpu_loras=max(1, loadable),
    )
