"""The persona part of ``run_eval``: read the questions and fit the judge before any model loads,
then turn both sides' answers into rates, calibration and example answers for the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import load_records
from ..errors import DatasetError, TunesmithError
from ..runcard import RunCard
from .items import EvalItem
from .persona import (
    Question,
    StyleJudge,
    fit_style_judge,
    generic_lines,
    judge_answers,
    load_questions,
    persona_rates,
    topic_calibration,
)

EXAMPLES = 6  # answers per kind shown side by side in the report


@dataclass
class PersonaInputs:
    """Everything the persona metrics need, checked before the model loads."""

    questions: list[Question]
    items: list[EvalItem]
    judge: StyleJudge
    topic: dict[str, Any]
    persona_source: str


def _persona_answers(card: RunCard, path: str | Path | None) -> tuple[list[str], str]:
    source = path or card.data.get("path")
    if not source:
        raise DatasetError("the run card names no training data; give the persona's lines (--persona-lines)")
    try:
        convs = load_records(source, "auto", None)
    except TunesmithError as e:
        hint = (
            ""
            if path
            else " (the run's training data, from its run card; --persona-lines names another file)"
        )
        raise DatasetError(f"cannot read the persona's own answers{hint}: {e}", str(source)) from None
    return [m["content"] for c in convs for m in c if m["role"] == "assistant"], str(source)


def read_persona_inputs(
    card: RunCard, questions: str | Path, persona_lines: str | Path | None, generic: str | Path | None
) -> PersonaInputs:
    """Load the question file, fit the in-character judge and calibrate it and the topic rule."""
    qs = load_questions(questions)
    lines, source = _persona_answers(card, persona_lines)
    judge = fit_style_judge(lines, generic_lines(generic))
    items = [EvalItem([{"role": "user", "content": q.question}], q.reference) for q in qs]
    return PersonaInputs(qs, items, judge, topic_calibration(qs), source)


def persona_section(inp: PersonaInputs, answers: dict[str, list[Any]], label: str) -> dict[str, Any]:
    """metrics.json's ``persona`` entry: rates per side, calibration, per-question verdicts."""
    models, verdicts = {}, {}
    for side, gens in answers.items():
        texts = [g.text for g in gens]
        verdicts[side] = judge_answers(inp.questions, texts, [g.stopped for g in gens], inp.judge)
        models[side] = persona_rates(inp.questions, texts, verdicts[side])
    answered = [
        {"id": q.id, "kind": q.kind, "question": q.question, "reference": q.reference}
        | {side: answers[side][i].text for side in answers}
        | {f"{side}_verdict": verdicts[side][i] for side in answers}
        for i, q in enumerate(inp.questions)
    ]
    examples = [
        a for kind in ("persona", "general") for a in [x for x in answered if x["kind"] == kind][:EXAMPLES]
    ]
    return {
        "questions": label,
        "persona_lines": inp.persona_source,
        "calibration": {"in_character": inp.judge.calibration, "on_topic": inp.topic},
        "models": models,
        "examples": examples,
        "answers": answered,
    }
