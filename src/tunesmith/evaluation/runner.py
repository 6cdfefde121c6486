"""run_eval: base vs fine-tuned on one data set — perplexity, answer metrics, sweep, report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DatasetError, ModelSourceError, RunDirError
from ..generation import Sampling
from ..logs import get_logger
from ..modeling import resolve_source
from ..runcard import DEFAULT_MAX_LENGTH, RunCard, read_run_card
from ..runtime.chatbot import Chatbot, load_chatbot
from .generate import generate_all
from .items import EvalItem, load_eval_items
from .metrics import REFERENCE_METRICS, answer_metrics
from .perplexity import answer_perplexity
from .persona_run import PersonaInputs, persona_section, read_persona_inputs
from .report import write_report

log = get_logger(__name__)


@dataclass
class EvalOptions:
    """What ``run_eval`` does beyond the defaults stored in the run card.

    Attributes:
        out_dir: where the report goes (default ``RUN_DIR/eval``).
        limit: evaluate only the first N records (also of ``general``).
        general: a general-purpose data file; perplexity on it before/after shows forgetting.
        sweep: decoding settings to try on the fine-tuned model (see ``parse_sweep``); None: no sweep.
        samples: answers shown side by side in the report.
        batch_size: prompts per generation batch.
        ppl_batch_size: conversations per perplexity pass (each keeps answer-length x vocabulary logits).
        sampling: overrides of the run card's generation defaults (temperature, top_p, ...).
        base_run: compare with this run directory instead of the base model with the adapter off.
        allow_different_base: evaluate even if the base model's weights differ from the run card's.
        device: "auto", "cpu" or "cuda".
        dtype: model dtype (default: bfloat16 on CUDA, float32 on CPU).
        max_length: token limit of perplexity examples (default: the run's ``data.max_length``).
        progress: show progress bars on stderr (when it is a terminal).
        data_label: how the report names the data (default: the file path).
        persona: a question file (``persona.load_questions``): persona metrics on held-out questions.
        persona_lines: the persona's own answers for the in-character judge (default: the run's
            training data, from its run card).
        generic: generic assistant text for the judge's other class (default: tunesmith's own).
    """

    out_dir: str | Path | None = None
    limit: int | None = None
    general: str | Path | None = None
    sweep: list[dict[str, Any]] | None = None
    samples: int = 5
    batch_size: int = 32
    ppl_batch_size: int = 8
    sampling: dict[str, Any] = field(default_factory=dict)
    base_run: str | Path | None = None
    allow_different_base: bool = False
    device: str = "auto"
    dtype: str | None = None
    max_length: int | None = None
    progress: bool = True
    data_label: str | None = None
    persona: str | Path | None = None
    persona_lines: str | Path | None = None
    generic: str | Path | None = None


@dataclass
class EvalResult:
    """What ``run_eval`` wrote (``out_dir``) and its metrics (as in ``out_dir/metrics.json``)."""

    out_dir: Path
    metrics: dict[str, Any]

    def headline(self) -> dict[str, Any]:
        """The few numbers worth keeping in the run card: {metric: {"base": x, "fine_tuned": y}}."""
        keys = ("perplexity", "bleu4", "rougeL", "distinct2", "loop_rate", "stop_rate", "general_perplexity")
        models = self.metrics["models"]
        out: dict[str, Any] = {"records": self.metrics["data"]["records"], "report": str(self.out_dir)}
        for k in keys:
            if k in models["fine_tuned"]:
                out[k] = {side: models[side].get(k) for side in ("base", "fine_tuned")}
        persona = self.metrics.get("persona")
        if persona:
            for k in ("good_rate", "in_character_rate", "leak_rate", "general_good_rate"):
                if k in persona["models"]["fine_tuned"]:
                    out[f"persona_{k}"] = {
                        side: persona["models"][side].get(k) for side in ("base", "fine_tuned")
                    }
        return out


@dataclass
class _Side:
    """One column of the comparison: a loaded run, with or without its adapter."""

    name: str
    bot: Chatbot
    base: bool


def _card_hash(card: RunCard, where: Path) -> str:
    try:
        return card.base_model["content_hash"]
    except (KeyError, TypeError):
        raise RunDirError(f"{where}: the run card names no base model content_hash") from None


def check_base_model(run_dir: Path, card: RunCard, base_run: Path | None, allow_different: bool) -> None:
    """Refuse a base model that cannot be resolved, or whose weights differ from the run card's.

    Raises:
        RunDirError: the base model cannot be resolved; or its hash (or ``base_run``'s base
            model hash) differs and ``allow_different`` is not set.
    """
    expected = _card_hash(card, run_dir)
    spec = card.base_model.get("source", "")
    try:
        source = resolve_source(spec, card.base_model.get("revision"))
    except ModelSourceError as e:
        raise RunDirError(
            f"{run_dir}: the run card's base model cannot be resolved for evaluation; {e}"
        ) from None
    problems = []
    if source.content_hash != expected:
        problems.append(
            f"the base model {spec!r} found now (hash {source.content_hash[:12]}) differs from the one "
            f"{run_dir} was trained on (hash {expected[:12]})"
        )
    if base_run is not None:
        other = _card_hash(read_run_card(base_run), base_run)
        if other != expected:
            problems.append(
                f"{base_run} was trained on another base model (hash {other[:12]} != {expected[:12]})"
            )
    if problems and not allow_different:
        raise RunDirError("; ".join(problems) + ". Pass --allow-different-base to compare anyway.")
    for p in problems:
        log.warning("%s (allowed)", p)


def _answer_side(side: _Side, items: list[EvalItem], sampling: Sampling, opts: EvalOptions) -> list[Any]:
    prompts = [it.prompt for it in items]
    return generate_all(side.bot, prompts, sampling, side.base, opts.batch_size, opts.progress, side.name)


def _score(gens: list[Any], items: list[EvalItem]) -> dict[str, float]:
    return answer_metrics(
        [g.text for g in gens],
        [it.reference for it in items],
        [g.completion_tokens for g in gens],
        [g.stopped for g in gens],
    )


def _perplexities(
    sides: list[_Side], items: list[EvalItem], general: list[EvalItem] | None, max_length: int, bs: int
) -> dict[str, dict[str, Any]]:
    scored = [it.conversation for it in items if it.reference is not None]
    out: dict[str, dict[str, Any]] = {s.name: {} for s in sides}
    for s in sides:
        if scored:
            ppl = answer_perplexity(s.bot, scored, s.base, max_length, bs)
            out[s.name].update(perplexity=ppl["perplexity"], answer_tokens=ppl["answer_tokens"])
            out[s.name]["perplexity_detail"] = ppl
        if general:
            convs = [it.conversation for it in general if it.reference is not None]
            # Without the persona's system prompt: forgetting shows on the prompts a general user sends.
            gen = answer_perplexity(s.bot, convs, s.base, max_length, bs, system_prompt=False)
            out[s.name]["general_perplexity"] = gen["perplexity"]
    return out


def _load_sides(run_dir: Path, opts: EvalOptions) -> list[_Side]:
    bot = load_chatbot(run_dir, device=opts.device, dtype=opts.dtype)
    if opts.base_run is not None:
        baseline = load_chatbot(opts.base_run, device=opts.device, dtype=opts.dtype)
        return [_Side("base", baseline, False), _Side("fine_tuned", bot, False)]
    return [_Side("base", bot, True), _Side("fine_tuned", bot, False)]


def _skipped(items: list[EvalItem]) -> dict[str, str]:
    if any(it.reference is not None for it in items):
        return {}
    why = "the data has no reference answers"
    return {k: why for k in ("perplexity", *REFERENCE_METRICS)}


def _samples(items: list[EvalItem], answers: dict[str, list[Any]], n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": it.prompt[-1]["content"],
            "reference": it.reference,
            "base": answers["base"][i].text,
            "fine_tuned": answers["fine_tuned"][i].text,
        }
        for i, it in enumerate(items[:n])
    ]


@dataclass
class _Inputs:
    """Everything read and checked before the model loads."""

    card: RunCard
    items: list[EvalItem]
    general: list[EvalItem] | None
    base_run: Path | None
    data_label: str
    persona: PersonaInputs | None = None


def _read_inputs(run_dir: Path, data: str | Path | list[EvalItem] | None, opts: EvalOptions) -> _Inputs:
    card = read_run_card(run_dir)
    base_run = Path(opts.base_run) if opts.base_run is not None else None
    if base_run is not None:
        read_run_card(base_run)  # a missing or unfinished baseline fails before any loading
    persona = (
        read_persona_inputs(card, opts.persona, opts.persona_lines, opts.generic) if opts.persona else None
    )
    if data is None:
        if persona is None:
            raise DatasetError(
                "nothing to evaluate: give evaluation data, a question file (persona), or both"
            )
        items, label = persona.items, opts.data_label or str(opts.persona)
    elif isinstance(data, list):
        items, label = data[: opts.limit], opts.data_label or "records given by the caller"
        if not items:
            raise DatasetError(f"no records to evaluate ({label})")
    else:
        items, label = load_eval_items(data, limit=opts.limit), opts.data_label or str(data)
    general = load_eval_items(opts.general, limit=opts.limit) if opts.general else None
    if general is not None and all(it.reference is None for it in general):
        raise DatasetError(
            "general data needs answers to measure perplexity on; none has one", str(opts.general)
        )
    return _Inputs(card, items, general, base_run, label, persona)


def _answers_and_sweep(
    sides: list[_Side], items: list[EvalItem], sampling: Sampling, opts: EvalOptions
) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    answers = {s.name: _answer_side(s, items, sampling, opts) for s in sides}
    sweep = []
    for setting in opts.sweep or []:
        side = _Side(f"sweep {setting}", sides[1].bot, False)
        sweep.append(
            {
                "setting": setting,
                "metrics": _score(_answer_side(side, items, sampling.updated(**setting), opts), items),
            }
        )
    return answers, sweep


def run_eval(
    run_dir: str | Path, data: str | Path | list[EvalItem] | None, opts: EvalOptions | None = None
) -> EvalResult:
    """Evaluate a finished run against its base model (or ``opts.base_run``) and write a report.

    Args:
        run_dir: a run directory written by ``run_train``.
        data: an evaluation data file (records without a reference answer are allowed), or items;
            None with ``opts.persona``: the question file's questions and references are the data.
        opts: see ``EvalOptions``.

    Returns:
        The report directory and the metrics written to its ``metrics.json``.

    Raises:
        RunDirError: the run dir is missing or unfinished, or its base model cannot be resolved
            or differs from the one trained on (unless ``opts.allow_different_base``).
        DatasetError: the data (or ``opts.general``) is missing, empty or malformed.
    """
    opts = opts or EvalOptions()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    inp = _read_inputs(run_dir, data, opts)  # every input is checked before the (slow) model load
    check_base_model(run_dir, inp.card, inp.base_run, opts.allow_different_base)
    sides = _load_sides(run_dir, opts)
    sampling = sides[1].bot.defaults.updated(**opts.sampling)
    if sampling.seed is None:
        sampling = replace(sampling, seed=0)  # sampled answers are reproducible run to run
    max_length = opts.max_length or inp.card.max_length or DEFAULT_MAX_LENGTH
    log.info("evaluating %s on %d records: perplexity", run_dir, len(inp.items))
    models = _perplexities(sides, inp.items, inp.general, max_length, opts.ppl_batch_size)
    answers, sweep = _answers_and_sweep(sides, inp.items, sampling, opts)
    for s in sides:
        models[s.name].update(_score(answers[s.name], inp.items))
    persona = None
    if inp.persona is not None:
        reuse = inp.items is inp.persona.items  # no other data: the questions were answered above
        p_answers = (
            answers if reuse else {s.name: _answer_side(s, inp.persona.items, sampling, opts) for s in sides}
        )
        persona = persona_section(inp.persona, p_answers, str(opts.persona))
    metrics = {
        "run_dir": str(run_dir),
        "data": {
            "path": inp.data_label,
            "records": len(inp.items),
            "with_reference": sum(it.reference is not None for it in inp.items),
            "limit": opts.limit,
        },
        "base": {
            "label": f"run `{inp.base_run}`"
            if inp.base_run
            else f"`{inp.card.base_model.get('source')}` with the adapter off",
            "run": str(inp.base_run) if inp.base_run else None,
        },
        "sampling": sampling.as_dict(),
        "max_length": max_length,
        "models": models,
        "skipped": _skipped(inp.items),
        "general": {"path": str(opts.general), "records": len(inp.general)} if inp.general else None,
        "sweep": sweep,
        "samples": _samples(inp.items, answers, opts.samples),
        "persona": persona,
        "seconds": time.perf_counter() - started,
    }
    out_dir = Path(opts.out_dir) if opts.out_dir else run_dir / "eval"
    write_report(out_dir, metrics, run_dir, _generations(inp.items, answers))
    return EvalResult(out_dir, metrics)


def _generations(items: list[EvalItem], answers: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [
        {"index": i, "prompt": it.prompt, "reference": it.reference}
        | {side: gens[i].text for side, gens in answers.items()}
        | {f"{side}_stopped": gens[i].stopped for side, gens in answers.items()}
        for i, it in enumerate(items)
    ]
