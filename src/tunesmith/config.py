"""Typed configuration: small sections, YAML files, dotted command-line overrides.

Unknown keys and wrong types are errors, and every problem is reported together in one
``ConfigError`` with a "did you mean" hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .generation import Sampling

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with a one-line help text."""
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    source: str = option("", "model: local HF directory, .gguf file, hub id, or packaged name")
    revision: str | None = option(None, "hub revision (branch, tag or commit) for hub ids")
    chat_template: str | None = option(
        None,
        "the tokenizer's chat template, or a builtin (gemma, chatml, plain), a .jinja file or Jinja text",
    )
    trust_remote_code: bool = option(False, "allow custom modelling code from the model repository")
    task: Literal["chat", "classification"] = option(
        "chat", "chat: a causal LM on conversations; classification: a sequence classifier on text + label"
    )


@dataclass
class DataConfig:
    path: str = option("", "training data file (.json or .jsonl)")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = option(
        "auto", "record format; 'auto' detects it per record"
    )
    system_prompt: str | None = option(None, "system prompt used in training and stored for inference")
    val_fraction: float = option(0.1, "fraction of records held out for validation (0 disables)")
    seed: int = option(42, "seed of the train/validation split and of `data.sample`")
    max_length: int = option(384, "maximum tokens per example; longer ones are truncated and counted")
    limit: int | None = option(None, "use only the first N records, in file order (quick experiments)")
    sample: int | None = option(
        None, "use a random subset of N records, drawn with `data.seed` (quick runs over the whole file)"
    )
    clean: str | None = option(None, "clean before training: 'default' or a cleaning recipe YAML file")
    replay_path: str | None = option(None, "general-purpose data mixed into training against forgetting")
    replay_ratio: float = option(0.0, "share of the training examples drawn from replay_path (e.g. 0.2)")
    text_field: str = option("text", "classification: the field (column) holding the text")
    label_field: str = option("label", "classification: the field (column) holding the label")


@dataclass
class LoraConfig:
    r: int = option(8, "LoRA rank")
    alpha: int = option(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = option(0.1, "dropout on the LoRA branch")
    target_modules: list[str] = option(DEFAULT_LORA_TARGETS, "module names that get adapters")
    method: Literal[
        "lora", "dora", "rslora", "loraplus", "full", "freeze", "prompt_tuning", "p_tuning", "qlora"
    ] = option("lora", "training method (see docs/training.md); full and freeze save full weights")
    loraplus_lr_ratio: float = option(
        16.0, "loraplus: learning rate of the B matrices = ratio × learning_rate"
    )
    train_layers: int | None = option(None, "freeze: train only the last N transformer layers")
    train_modules: list[str] = option([], "freeze: also train these modules (dotted names, e.g. lm_head)")
    virtual_tokens: int = option(20, "prompt_tuning / p_tuning: number of trained virtual tokens")
    prompt_init: str | None = option(None, "prompt_tuning: initialise the virtual tokens from this text")
    merge: bool = option(False, "also write the adapter merged into the base weights to RUN_DIR/merged")


@dataclass
class TrainConfig:
    output_dir: str = option("runs/run", "run directory to write")
    epochs: float = option(3.0, "number of epochs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)")
    learning_rate: float = option(1e-4, "peak learning rate")
    min_lr: float = option(1e-6, "floor of the linear decay after warmup")
    batch_size: int = option(2, "examples per device per step")
    grad_accum: int = option(2, "gradient accumulation steps")
    warmup_ratio: float = option(0.1, "fraction of steps spent warming up linearly")
    weight_decay: float = option(0.01, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient-norm clipping")
    logging_steps: int = option(10, "log every N optimizer steps")
    save_steps: int = option(100, "checkpoint every N optimizer steps")
    eval_steps: int | None = option(None, "evaluate every N steps (default: save_steps)")
    early_stopping_patience: int | None = option(
        None, "stop after this many evaluations without a better validation loss (null: off)"
    )
    early_stopping_min_delta: float = option(
        0.0, "early stopping: smaller validation-loss gains count as none"
    )
    save_total_limit: int | None = option(3, "keep at most this many checkpoints")
    seed: int = option(42, "training seed")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "compute dtype; auto = bf16 where it measures at least 15% faster than fp32 here, else fp32"
    )
    threads: int | None = option(None, "CPU threads (default: the physical cores no other process is using)")
    expected_seconds: float | None = option(
        None, "training time you expect; a pace projecting 3x more is reported with its likely causes"
    )
    gradient_checkpointing: bool = option(
        False, "trade compute for memory (slower; only when memory requires it)"
    )
    unpadded: bool = option(True, "run each sequence without padding tokens (exact; same loss and gradients)")
    label_logits_only: bool = option(True, "compute LM-head logits only where labels exist (exact)")
    pad_to_multiple_of: int = option(
        64, "pad packed rows and label rows to a multiple of this many tokens: shapes repeat (exact; 0: off)"
    )
    frozen_bf16: bool = option(
        True, "under bf16 autocast, store frozen linear weights in bf16 once (exact; less memory)"
    )
    fast_dropout: bool = option(True, "draw LoRA dropout masks from rand >= p (same distribution, faster)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir")
    overwrite: bool = option(False, "replace the tunesmith run in output_dir (never anything else)")
    trainer_args: dict[str, Any] = option({}, "extra transformers.TrainingArguments (escape hatch)")
    lr_multipliers: dict[str, float] = option(
        {}, "learning-rate factor by parameter-name regex, first match wins (e.g. {embed_tokens: 0.1})"
    )
    layer_lr_decay: float = option(1.0, "layer i of L learns at decay^(L-1-i) × the rate, embeddings decay^L")


GenerationConfig = Sampling  # the config's ``generation`` section is the runtime's sampling settings


@dataclass
class EvalConfig:
    at_end: bool = option(
        False, "after training, evaluate base vs fine-tuned and put headline metrics in the run card"
    )
    data: str | None = option(None, "evaluation data file (default: the validation split)")
    general: str | None = option(None, "general-purpose data file: perplexity before/after shows forgetting")
    limit: int | None = option(64, "evaluate at most this many records (null: all)")
    samples: int = option(5, "sample answers shown side by side in the report")
    batch_size: int = option(32, "prompts per generation batch")


DEFAULT_TUNE_SPACE = {
    "train.learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "lora.r": [4, 8, 16, 32],
    "lora.alpha": [8, 16, 32, 64],
    "lora.dropout": {"low": 0.0, "high": 0.2},
    "train.epochs": {"low": 1, "high": 3},
}


@dataclass
class TuneConfig:
    trials: int = option(20, "number of trials (`tunesmith tune --trials N` overrides)")
    space: dict[str, Any] = option(
        DEFAULT_TUNE_SPACE, "search space: section.key -> [choices] or {low, high, log?, step?}"
    )
    pruner: Literal["median", "none"] = option(
        "median", "stop trials whose validation loss trails the median"
    )
    seed: int = option(42, "seed of the search (Optuna's TPE sampler)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: Sampling = field(default_factory=Sampling)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


REQUIRED = {("model", "source"), ("data", "path")}
_TOP_LEVEL = "the top level must be a mapping of sections (model:, data:, train: ...), got a "


def _hint(name: str, choices: list[str], prefix: str = "") -> str:
    if len(name) > 100:  # no near miss of a key name is this long
        return ""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean `{prefix}{close[0]}`?)" if close else ""


# Bounds on what a config may hold. YAML aliases (*name) share one object in memory, but every
# walk over the value (type checks, messages, dumping) expands them: a "billion laughs" alias bomb
# of a few hundred bytes would hang tunesmith. Real configs are a few KiB with ~100 values.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a line: error messages never print a whole (huge) value."""
    return _REPR.repr(value)


def _count_values(data: Any, where: str | None) -> None:
    """Refuse a value that holds more than MAX_CONFIG_VALUES items once aliases are expanded.

    Iterative and stops at the limit, so a self-referencing alias or a bomb costs microseconds.
    """
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"holds more than {MAX_CONFIG_VALUES} values, counting each YAML alias (*name) "
                "expanded; no tunesmith config is this large (an alias bomb?)",
                where,
            )
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def load_yaml(text: str, where: str | None) -> Any:
    """``yaml.safe_load`` under the alias-expansion and nesting limits; every failure is one ConfigError.

    For every YAML file tunesmith reads as configuration (configs, overrides, cleaning recipes).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {str(e)[:400]}", where) from None
    except RecursionError:
        raise ConfigError("YAML nested too deeply to be a config", where) from None
    _count_values(data, where)
    return data


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; convert harmless cases (int→float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, problems)
    if origin is Literal:
        if not isinstance(value, str | int | float | bool | None) or value not in args:
            problems.append(f"{where}: {short_repr(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {short_repr(value)}")
            return value
        return [_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, bool):
            problems.append(f"{where}: expected a number, got {short_repr(value)}")
            return value
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{where}: expected a number, got {short_repr(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {short_repr(value)}")
        return value
    return value


def fill_section(section: Any, body: dict[str, Any], prefix: str, problems: list[str]) -> None:
    """Set ``section``'s fields from ``body``, type-checked; unknown keys and bad types go to problems."""
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in dataclasses.fields(section)]
    for key, value in body.items():
        if key not in hints:
            problems.append(f"unknown key `{prefix}{str(key)[:80]}`{_hint(str(key), names, prefix)}")
            continue
        setattr(section, key, _coerce(value, hints[key], f"`{prefix}{key}`", problems))


def _build(raw: dict[str, Any], source: str | None) -> Config:
    problems: list[str] = []
    cfg = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if not isinstance(raw, dict):
        raise ConfigError(_TOP_LEVEL + type(raw).__name__, source)
    for sname, body in raw.items():
        if sname not in sections:
            problems.append(f"unknown section `{str(sname)[:80]}`{_hint(str(sname), list(sections))}")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(f"`{sname}` must be a mapping of keys, got {short_repr(body)}")
            continue
        fill_section(getattr(cfg, sname), body, sname + ".", problems)
    for sname, key in sorted(REQUIRED):
        if not getattr(getattr(cfg, sname), key):
            problems.append(f"`{sname}.{key}` is required")
    problems += _check_ranges(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _regex(pattern: Any) -> bool:
    import re

    try:
        re.compile(pattern)
        return True
    except (re.error, TypeError):
        return False


def _check_ranges(cfg: Config) -> list[str]:
    d, t, g, lo, ev = cfg.data, cfg.train, cfg.generation, cfg.lora, cfg.eval
    checks = [
        (lambda: 0 <= d.val_fraction < 1, "`data.val_fraction` must be in [0, 1)"),
        (lambda: d.max_length >= 8, "`data.max_length` must be at least 8"),
        (lambda: 0 <= d.replay_ratio < 1, "`data.replay_ratio` must be in [0, 1)"),
        (
            lambda: (
                cfg.model.task != "classification"
                or lo.method in ("lora", "dora", "rslora", "loraplus", "full", "freeze")
            ),
            f"`model.task: classification` trains with lora, dora, rslora, loraplus, full or freeze, "
            f"not `lora.method: {lo.method}`",
        ),
        (
            lambda: (
                cfg.model.task != "classification" or not (lo.merge or d.replay_path or d.clean or ev.at_end)
            ),
            "`model.task: classification` does not take `lora.merge`, `data.replay_path`, `data.clean` "
            "or `eval.at_end` (they are for chat models); remove them",
        ),
        (
            lambda: bool(d.replay_path) == (d.replay_ratio > 0),
            "`data.replay_path` and `data.replay_ratio` go together: set both (e.g. replay_ratio: 0.2) "
            "or neither",
        ),
        (
            lambda: all(_number(v) and v >= 0 for v in t.lr_multipliers.values()),
            "`train.lr_multipliers` values must be numbers >= 0",
        ),
        (
            lambda: all(_regex(k) for k in t.lr_multipliers),
            "`train.lr_multipliers` keys must be regular expressions over parameter names",
        ),
        (lambda: 0 < t.layer_lr_decay <= 1, "`train.layer_lr_decay` must be in (0, 1]"),
        (lambda: lo.r >= 1, "`lora.r` must be >= 1"),
        (lambda: 0 <= lo.dropout < 1, "`lora.dropout` must be in [0, 1)"),
        (lambda: lo.loraplus_lr_ratio > 0, "`lora.loraplus_lr_ratio` must be > 0"),
        (lambda: lo.virtual_tokens >= 1, "`lora.virtual_tokens` must be >= 1"),
        (lambda: lo.train_layers is None or lo.train_layers >= 1, "`lora.train_layers` must be >= 1"),
        (
            lambda: lo.method != "freeze" or lo.train_layers or lo.train_modules,
            "`lora.method: freeze` needs `lora.train_layers` (train the last N layers) "
            "and/or `lora.train_modules` (e.g. [lm_head])",
        ),
        (
            lambda: not lo.merge or lo.method not in ("prompt_tuning", "p_tuning"),
            f"`lora.merge` cannot fold the virtual tokens of `lora.method: {lo.method}` into the weights; "
            "set lora.merge=false (chat loads the adapter as it is)",
        ),
        (
            lambda: not lo.merge or lo.method != "qlora",
            "`lora.merge` with `lora.method: qlora` would merge into a 4-bit base; set lora.merge=false "
            "and merge the adapter onto the full-precision base afterwards",
        ),
        (
            lambda: not lo.merge or lo.method not in ("full", "freeze"),
            f"`lora.method: {lo.method}` already saves full weights (RUN_DIR/model); drop `lora.merge`",
        ),
        (lambda: t.batch_size >= 1, "`train.batch_size` must be >= 1"),
        (lambda: t.grad_accum >= 1, "`train.grad_accum` must be >= 1"),
        (lambda: t.pad_to_multiple_of >= 0, "`train.pad_to_multiple_of` must be >= 0 (0 = off)"),
        (lambda: 0 <= t.warmup_ratio < 1, "`train.warmup_ratio` must be in [0, 1)"),
        (lambda: 0 <= t.min_lr <= t.learning_rate, "`train.min_lr` must be in [0, learning_rate]"),
        (
            lambda: t.save_steps >= 1 and t.logging_steps >= 1,
            "`train.save_steps` and `train.logging_steps` must be >= 1",
        ),
        (
            lambda: t.early_stopping_patience is None or t.early_stopping_patience >= 1,
            "`train.early_stopping_patience` must be >= 1 (or null: off)",
        ),
        (lambda: t.early_stopping_min_delta >= 0, "`train.early_stopping_min_delta` must be >= 0"),
        (
            lambda: not t.early_stopping_patience or d.val_fraction > 0,
            "`train.early_stopping_patience` watches the validation loss: set `data.val_fraction` > 0",
        ),
        (
            lambda: not t.early_stopping_patience or t.save_steps % (t.eval_steps or t.save_steps) == 0,
            "with `train.early_stopping_patience`, `train.save_steps` must be a multiple of "
            "`train.eval_steps` so that the best evaluation has a checkpoint to keep",
        ),
        (lambda: t.threads is None or t.threads >= 1, "`train.threads` must be >= 1 (or null: automatic)"),
        (lambda: g.temperature >= 0, "`generation.temperature` must be >= 0"),
        (lambda: 0 < g.top_p <= 1, "`generation.top_p` must be in (0, 1]"),
        (lambda: g.max_new_tokens >= 1, "`generation.max_new_tokens` must be >= 1"),
        (lambda: ev.limit is None or ev.limit >= 1, "`eval.limit` must be >= 1 (or null for all)"),
        (lambda: d.limit is None or d.limit >= 1, "`data.limit` must be >= 1 (or null for all)"),
        (lambda: d.sample is None or d.sample >= 1, "`data.sample` must be >= 1 (or null for all)"),
        (
            lambda: d.limit is None or d.sample is None,
            "set one of `data.limit` (the first N records) and `data.sample` (a random N), not both",
        ),
        (
            lambda: ev.batch_size >= 1 and ev.samples >= 0,
            "`eval.batch_size` must be >= 1, `eval.samples` >= 0",
        ),
        (
            lambda: not ev.at_end or ev.data or d.val_fraction > 0,
            "`eval.at_end` needs held-out data: set `eval.data` or `data.val_fraction` > 0",
        ),
    ]
    problems = []
    for ok, msg in checks:
        try:
            if not ok():
                problems.append(msg)
        except TypeError:  # a wrong type, already reported by _coerce
            pass
    return problems


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["lora.r=16", "train.learning_rate=5e-5"]`` into a nested dict."""
    nested: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            problems.append(f"override {short_repr(item)} must look like section.key=value")
            continue
        try:
            value = load_yaml(text, None) if text.strip() else ""
        except ConfigError as e:
            problems.append(f"override {short_repr(item)}: {e.problems[0]}")
            continue
        nested.setdefault(parts[0], {})[parts[1]] = value
    if problems:
        raise ConfigError(problems, "command-line overrides")
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (optional) and apply dotted overrides.

    Raises:
        ConfigError: listing every unknown key, wrong type and out-of-range value.
    """
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        try:
            if Path(path).stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB; is this a config file?", source)
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file: {e.strerror}", source) from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8",
                source,
            ) from None
        raw = load_yaml(text, source)
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):  # checked before the overrides are merged in
            raise ConfigError(_TOP_LEVEL + type(raw).__name__, source)
    if overrides:
        raw = _merge(raw, parse_overrides(overrides))
        source = f"{source} + overrides" if source else "command-line overrides"
    return _build(raw, source)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from a plain dict (as stored in a run directory)."""
    return _build(raw, None)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    from .files import atomic_write_text

    text = yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False)
    atomic_write_text(path, text)


def describe(section: str | None = None) -> str:
    """Human-readable list of every key with its default and help (for `tunesmith config`)."""
    lines = []
    for f in dataclasses.fields(Config):
        if section and f.name != section:
            continue
        lines.append(f"{f.name}:")
        for sf in dataclasses.fields(getattr(Config(), f.name)):
            default = getattr(getattr(Config(), f.name), sf.name)
            lines.append(f"  {sf.name}: {default!r}  # {sf.metadata.get('help', '')}")
    return "\n".join(lines)
