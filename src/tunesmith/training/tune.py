"""Hyperparameter search (``tunesmith tune``): Optuna trials of ``run_train``, minimising validation loss.

Each trial samples the ``tune.space`` (dotted config keys → choices or ranges), trains a full run
into ``train.output_dir/trial-NNN`` and reports every evaluation to Optuna, whose pruner stops
trials that trail the median of earlier ones at the same step. The study directory
(``train.output_dir``) gets ``results.json`` and ``results.md`` (one row per trial, rewritten after
each) and ``best.yaml``: the best trial's full config, ready for ``tunesmith train``.
Optuna does the sampling (TPE) and pruning; only the glue is here.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, config_from_dict, dump_config
from ..deps import require
from ..errors import ConfigError, RunDirError
from ..files import atomic_write_json, atomic_write_text, ensure_dir
from ..logs import get_logger
from .rundir import protected_reason

log = get_logger(__name__)


def _optuna() -> Any:
    return require("optuna", "tune", "`tunesmith tune`")


def _field_type(cfg: Config, key: str) -> Any:
    import typing

    section, name = key.split(".")
    return typing.get_type_hints(type(getattr(cfg, section)))[name]


def _check_spec(cfg: Config, key: str, spec: Any) -> list[str]:
    parts = key.split(".")
    sections = {f.name for f in dataclasses.fields(Config)} - {"tune"}
    if len(parts) != 2 or parts[0] not in sections:
        return [f"`tune.space`: {key!r} is not a `section.key` of {', '.join(sorted(sections))}"]
    if parts[1] not in {f.name for f in dataclasses.fields(getattr(cfg, parts[0]))}:
        return [f"`tune.space`: unknown key `{key}`"]
    if isinstance(spec, list):
        return [] if spec else [f"`tune.space.{key}`: the list of choices is empty"]
    if (
        isinstance(spec, dict)
        and {"low", "high"} <= set(spec)
        and set(spec) <= {"low", "high", "log", "step"}
    ):
        low, high = _number(spec["low"]), _number(spec["high"])
        if low is None or high is None or low >= high:
            return [f"`tune.space.{key}`: needs numbers low < high, got {spec['low']!r}, {spec['high']!r}"]
        if spec.get("log") and low <= 0:
            return [f"`tune.space.{key}`: a log range needs low > 0"]
        return []
    return [f"`tune.space.{key}`: give a list of choices or {{low, high, log?, step?}}, got {spec!r}"]


def _number(v: Any) -> int | float | None:
    """A number, also from a string: YAML 1.1 reads ``1e-4`` (no dot) as text."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _candidates(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, list) else [_number(spec["low"]), _number(spec["high"])]


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with dotted keys set, validated like a config file (ConfigError lists the problems)."""
    raw = copy.deepcopy(cfg.to_dict())
    for key, value in values.items():
        section, name = key.split(".")
        raw[section][name] = value
    return config_from_dict(raw)


def check_tune(cfg: Config) -> None:
    """Everything a search needs, checked before the first trial.

    Raises:
        ConfigError: a malformed space, a value the config would refuse, or no validation split.
    """
    problems = []
    if cfg.tune.trials < 1:
        problems.append("`tune.trials` must be >= 1")
    if not cfg.tune.space:
        problems.append("`tune.space` is empty: name at least one key to search")
    if cfg.data.val_fraction <= 0:
        problems.append("`tunesmith tune` minimises the validation loss: set `data.val_fraction` > 0")
    for key, spec in cfg.tune.space.items():
        own = _check_spec(cfg, key, spec)
        problems += own
        for value in [] if own else _candidates(spec):
            try:
                with_values(cfg, {key: value})
            except ConfigError as e:
                problems += [f"`tune.space.{key}` = {value!r}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems, "the tune section")


def suggest(trial: Any, cfg: Config, space: dict[str, Any]) -> dict[str, Any]:
    """Sample one value per key: categorical for lists, int/float ranges by the key's type."""
    values = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            values[key] = trial.suggest_categorical(key, spec)
            continue
        kind = _field_type(cfg, key)
        low, high, step = _number(spec["low"]), _number(spec["high"]), _number(spec.get("step"))
        log_scale = bool(spec.get("log", False))
        if kind is int or kind == (int | None):
            values[key] = trial.suggest_int(key, int(low), int(high), step=int(step or 1), log=log_scale)
        else:
            values[key] = trial.suggest_float(key, float(low), float(high), step=step, log=log_scale)
    return values


def pruning_callback(trial: Any) -> Any:
    """A TrainerCallback that reports each validation loss to ``trial`` and stops a trial worth pruning."""
    from transformers import TrainerCallback

    optuna = _optuna()

    class OptunaPruning(TrainerCallback):
        last: tuple[int, float] | None = None  # (step, validation loss) last reported

        def on_evaluate(self, args, state, control, metrics=None, **kw):  # noqa: ANN001
            if not metrics or "eval_loss" not in metrics or state.global_step == 0:
                return
            self.last = (state.global_step, metrics["eval_loss"])
            trial.report(metrics["eval_loss"], state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"validation loss {metrics['eval_loss']:.4f} at step {state.global_step}"
                )

    return OptunaPruning()


@dataclass
class TuneResult:
    """The outcome of a search: every trial, the best one, and where the files are."""

    study_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @property
    def best_config(self) -> Path:
        return self.study_dir / "best.yaml"


def results_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The trials as a Markdown table (value = validation loss; pruned trials show their last one)."""
    head = ["trial", "state", "eval_loss", *keys, "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trial"], r["state"], _fmt(r.get("eval_loss")), *(_fmt(r["params"].get(k)) for k in keys)]
        lines.append("| " + " | ".join(map(str, [*cells, r.get("steps", "")])) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _study_entry(name: str) -> bool:
    """What a search writes into its study directory."""
    temp = name.startswith(".") and name.endswith(".tmp")  # an atomic write cut short
    return name in ("results.json", "results.md", "best.yaml") or name.startswith("trial-") or temp


def _prepare_study_dir(cfg: Config) -> Path:
    """The study directory, empty; an earlier search there is replaced only with train.overwrite.

    Like a run dir, a directory holding anything a search does not write is never touched.
    """
    study = Path(cfg.train.output_dir)
    if study.exists() and not study.is_dir():
        raise RunDirError(f"train.output_dir {study} is a file, not a directory; choose another one")
    entries = sorted(study.iterdir()) if study.is_dir() else []
    foreign = [p.name for p in entries if not _study_entry(p.name)]
    if foreign:
        raise RunDirError(
            f"train.output_dir {study} is not empty and is not a tunesmith search (it holds "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); choose another train.output_dir"
        )
    if entries:
        if not cfg.train.overwrite:
            raise RunDirError(
                f"{study} holds an earlier search; choose another train.output_dir "
                "or set train.overwrite=true"
            )
        reason = protected_reason(study, [cfg.data.path, cfg.model.source])
        if reason:
            raise RunDirError(f"train.output_dir {study} is {reason}; tunesmith never replaces it")
        for p in entries:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    ensure_dir(study)
    return study


def _write_results(result: TuneResult, keys: list[str]) -> None:
    atomic_write_json(result.study_dir / "results.json", {"best": result.best, "trials": result.rows})
    atomic_write_text(result.study_dir / "results.md", results_table(result.rows, keys))


def run_tune(cfg: Config, trials: int | None = None, pruner: Any = None) -> TuneResult:
    """Search ``cfg.tune.space`` with ``trials`` runs (default ``tune.trials``); return the results.

    Args:
        cfg: the base config; ``train.output_dir`` becomes the study directory.
        trials: overrides ``tune.trials``.
        pruner: an Optuna pruner overriding ``tune.pruner`` (tests use this).

    Raises:
        ConfigError: the search space or a sampled value is invalid (before any trial runs).
        RunDirError: an earlier search is in the study directory (``train.overwrite=true`` replaces it).
    """
    from .run import run_train

    optuna = _optuna()
    if trials is not None:
        cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, trials=trials))
    check_tune(cfg)
    study_dir = _prepare_study_dir(cfg)
    keys = list(cfg.tune.space)
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if cfg.tune.pruner == "median" else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are logged here
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed), pruner=pruner
    )
    result = TuneResult(study_dir)

    def objective(trial: Any) -> float:
        values = suggest(trial, cfg, cfg.tune.space)
        run_dir = str(study_dir / f"trial-{trial.number:03d}")
        fixed = {"train.output_dir": run_dir, "train.overwrite": False, "train.resume": False}
        trial_cfg = with_values(cfg, {**values, **fixed})
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": "running",
            "params": values,
            "run_dir": run_dir,
        }
        result.rows.append(row)
        log.info("trial %d: %s", trial.number, values)
        pruning = pruning_callback(trial)
        try:
            run_train(trial_cfg, callbacks=[pruning])
        except optuna.TrialPruned:
            step, loss = pruning.last or (None, None)
            row.update(state="pruned", eval_loss=loss, steps=step)
            log.info("trial %d pruned at step %s (validation loss %s)", trial.number, step, loss)
            _write_results(result, keys)
            raise
        except Exception as e:
            row.update(state="failed", error=f"{type(e).__name__}: {e}")
            _write_results(result, keys)
            raise
        from ..runcard import read_run_card

        metrics = read_run_card(run_dir).metrics
        log.info("trial %d: validation loss %.4f", trial.number, metrics["eval_loss"])
        row.update(state="complete", eval_loss=metrics["eval_loss"], steps=metrics.get("steps"))
        _write_results(result, keys)
        return metrics["eval_loss"]

    study.optimize(objective, n_trials=cfg.tune.trials, catch=())
    complete = [r for r in result.rows if r["state"] == "complete"]
    if complete:
        result.best = min(complete, key=lambda r: r["eval_loss"])
        best_cfg = with_values(cfg, {k: result.best["params"][k] for k in keys})
        best_cfg.train.output_dir = f"{cfg.train.output_dir}-best"
        dump_config(best_cfg, result.best_config)
        log.info(
            "best trial %d: eval_loss %.4f; config in %s",
            result.best["trial"],
            result.best["eval_loss"],
            result.best_config,
        )
    _write_results(result, keys)
    return result
