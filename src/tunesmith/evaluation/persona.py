"""Persona metrics: does the tuned model answer held-out questions in character, on topic, and stop?

Four judgements per answer, each a plain rule or a small classifier that is calibrated and
reported with its calibration, so a reader can see how far to trust it:

- **in character**: a character n-gram classifier (scikit-learn TF-IDF + logistic regression)
  trained on the persona's own answers against generic assistant text. Its calibration is the
  rate it gives held-out persona lines (should be high) and held-out generic text (should be low).
  Marker words (本宫, 臣妾, ...) cannot do this job: most persona lines hold none.
- **assistant leak**: the answer holds a marker of a generic assistant's self-description
  ("作为一个人工智能", "as an AI", ...).
- **on topic**: the answer holds one of the question's ``topic`` keywords (for a general
  question: a form of the correct answer). Calibrated by the rate it gives each question's
  reference answer and the references of *other* questions (should be low).
- **stopped** (the end-of-turn token, not the token limit) and **looping** (a repeated phrase),
  as in the other answer metrics.

An answer is **good** when it is in character, on topic, stopped, not looping and not leaking;
a general answer is good when it is on topic (correct), stopped, not looping and not leaking.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..data.formats import read_raw
from ..data.textcheck import looping_phrase
from ..errors import DatasetError
from .metrics import chars, distinct_n, rouge

KINDS = ("persona", "general")
FALSE_PASS = 0.03  # share of other-voice lines the judge's threshold lets pass in cross-validation
# Phrases of a generic assistant describing itself; none occurs in the persona's own lines.
DEFAULT_LEAK_MARKERS = (
    "人工智能",
    "语言模型",
    "AI助手",
    "AI 助手",
    "智能助手",
    "作为一个AI",
    "作为AI",
    "我是一个AI",
    "我是AI",
    "虚拟助手",
    "聊天机器人",
    "有什么可以帮",
    "有什么我可以帮",
    "希望对你有帮助",
    "希望对您有帮助",
    "as an ai",
    "language model",
    "ai assistant",
    "i'm an ai",
    "i am an ai",
    "how can i help",
)


@dataclass
class Question:
    """One held-out question.

    Attributes:
        id: a name for the report.
        kind: "persona" (judged in character) or "general" (judged for a correct answer).
        question: the user's turn.
        topic: keywords an answer to this question would hold (any one is enough).
        reference: a good answer, or None.
    """

    id: str
    kind: str
    question: str
    topic: list[str] = field(default_factory=list)
    reference: str | None = None


def _question(rec: Any, path: Path, index: int, line: int | None) -> Question:
    def bad(msg: str) -> DatasetError:
        return DatasetError(f"line {line}: {msg}" if line else msg, str(path), index)

    if not isinstance(rec, dict):
        raise bad(f"expected an object with a 'question' field, found {type(rec).__name__}")
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise bad(f"'question' must be non-empty text (found fields: {', '.join(map(str, rec)) or 'none'})")
    kind = rec.get("kind", "persona")
    if kind not in KINDS:
        raise bad(f"'kind' must be one of {', '.join(KINDS)}, found {str(kind)[:40]!r}")
    topic = rec.get("topic", [])
    if not isinstance(topic, list) or not all(isinstance(t, str) and t.strip() for t in topic):
        raise bad("'topic' must be a list of non-empty keywords")
    ref = rec.get("reference")
    if ref is not None and (not isinstance(ref, str) or not ref.strip()):
        raise bad("'reference' must be non-empty text or absent")
    return Question(str(rec.get("id", index)), kind, q.strip(), [t.strip() for t in topic], ref)


def load_questions(path: str | Path) -> list[Question]:
    """Read a question file: JSON Lines (one object a line) or a JSON array of objects.

    Each object has ``question`` and optionally ``id``, ``kind`` (persona | general), ``topic``
    (keywords) and ``reference``.

    Raises:
        DatasetError: the file is missing, malformed or empty, or a record is malformed (file,
            record and line).
    """
    path = Path(path)
    questions = [_question(rec, path, i, line) for i, (line, rec) in enumerate(read_raw(path))]
    if not questions:
        raise DatasetError("the question file holds no questions", str(path))
    return questions


# Text in other voices, written for tunesmith: a generic assistant's answers, and plain modern text.
GENERIC_FILES = ("assistant_voice.jsonl", "plain_voice.jsonl")


def _read_lines(text: str, where: str) -> list[str]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            out.append(line.strip())  # a plain text file: one line, one example
            continue
        try:
            out.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"line {lineno}: expected a JSON object with a 'text' field", where) from None
    return out


def generic_lines(path: str | Path | None = None) -> list[str]:
    """Text in voices other than the persona's: the in-character judge's other class.

    Args:
        path: a file of such text (JSON Lines with a ``text`` field, or one text a line);
            default: tunesmith's own sets (``GENERIC_FILES``).

    Raises:
        DatasetError: the file cannot be read or holds fewer than 10 lines.
    """
    if path is None:
        where = "tunesmith's generic voice sets"
        data = files("tunesmith.evaluation").joinpath("data")
        texts = [
            data.joinpath(name).read_text("utf-8") for name in GENERIC_FILES if data.joinpath(name).is_file()
        ]
        out = [line for text in texts for line in _read_lines(text, where)]
    else:
        where = str(path)
        try:
            out = _read_lines(Path(path).read_text(encoding="utf-8"), where)
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read generic text: {e}", where) from None
    if len(out) < 10:
        raise DatasetError(f"needs at least 10 lines of generic text, found {len(out)}", where)
    return out


@dataclass
class StyleJudge:
    """The in-character classifier with its calibration on text it was not trained on.

    Attributes:
        model: a fitted scikit-learn pipeline (TF-IDF over character 1-3-grams, logistic regression).
        calibration: ``persona_heldout`` (share of held-out persona lines judged in character),
            ``generic_heldout`` (the same for held-out generic text) and the counts behind them.
    """

    model: Any
    calibration: dict[str, float]
    threshold: float = 0.5

    def judge(self, texts: list[str]) -> list[bool]:
        """True for each text whose persona probability reaches the judge's threshold."""
        if not texts:
            return []
        return [bool(p >= self.threshold) for p in self.model.predict_proba(texts)[:, 1]]


def fit_style_judge(
    persona: list[str], generic: list[str], holdout: float = 0.2, seed: int = 0
) -> StyleJudge:
    """Train the in-character classifier and measure it on held-out lines of both classes.

    Args:
        persona: the persona's own answers (e.g. the training data's assistant turns).
        generic: generic assistant text (``generic_lines()``).
        holdout: share of each class kept out of training for the calibration.
        seed: seed of the hold-out draw.

    Raises:
        DatasetError: fewer than 10 usable lines in either class.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline

    persona = sorted({t.strip() for t in persona if t and t.strip()})
    generic = sorted({t.strip() for t in generic if t and t.strip()})
    for name, lines in (("persona answers", persona), ("generic assistant lines", generic)):
        if len(lines) < 10:
            raise DatasetError(
                f"the in-character judge needs at least 10 distinct {name}, found {len(lines)}"
            )
    rng = random.Random(seed)
    rng.shuffle(persona)
    rng.shuffle(generic)
    cut_p, cut_g = max(1, int(len(persona) * holdout)), max(1, int(len(generic) * holdout))
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=1),
        LogisticRegression(class_weight="balanced", max_iter=2000, C=4.0),
    )
    texts = persona[cut_p:] + generic[cut_g:]
    labels = [1] * (len(persona) - cut_p) + [0] * (len(generic) - cut_g)
    # The threshold comes from cross-validation on the training lines alone: the probability that
    # only FALSE_PASS of the other voices reach. The held-out lines then measure the judge as used.
    folds = cross_val_predict(model, texts, labels, cv=5, method="predict_proba")[:, 1]
    others = sorted(p for p, y in zip(folds, labels, strict=True) if y == 0)
    threshold = max(0.5, float(others[min(len(others) - 1, int(len(others) * (1 - FALSE_PASS)))]))
    model.fit(texts, labels)
    judge = StyleJudge(model, {}, threshold)
    judge.calibration = {
        "threshold": threshold,
        "persona_heldout": sum(judge.judge(persona[:cut_p])) / cut_p,
        "generic_heldout": sum(judge.judge(generic[:cut_g])) / cut_g,
        "persona_heldout_n": cut_p,
        "generic_heldout_n": cut_g,
        "persona_train_n": len(persona) - cut_p,
        "generic_train_n": len(generic) - cut_g,
    }
    return judge


def leaks(text: str, markers: tuple[str, ...] = DEFAULT_LEAK_MARKERS) -> bool:
    """Whether ``text`` holds a marker of a generic assistant describing itself."""
    low = text.lower()
    return any(m.lower() in low for m in markers)


def on_topic(text: str, topic: list[str]) -> bool | None:
    """Whether ``text`` holds one of the ``topic`` keywords (None: the question has none)."""
    if not topic:
        return None
    low = text.lower()
    return any(k.lower() in low for k in topic)


def _rate(flags: list[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def topic_calibration(questions: list[Question]) -> dict[str, float | None]:
    """How the topic rule scores the references: each its own question's, and another's (shifted)."""
    qs = [q for q in questions if q.topic and q.reference]
    if len(qs) < 2:
        return {"own_reference": None, "other_reference": None}
    own = [on_topic(q.reference or "", q.topic) for q in qs]
    other = [on_topic(qs[(i + 1) % len(qs)].reference or "", q.topic) for i, q in enumerate(qs)]
    return {"own_reference": _rate(own), "other_reference": _rate(other), "questions": len(qs)}


def judge_answers(
    questions: list[Question],
    answers: list[str],
    stopped: list[bool],
    judge: StyleJudge,
    markers: tuple[str, ...] = DEFAULT_LEAK_MARKERS,
) -> list[dict[str, Any]]:
    """One verdict per answer: in_character, leak, on_topic, stopped, looping, good."""
    if not (len(questions) == len(answers) == len(stopped)):
        raise ValueError("questions, answers and stopped differ in length")
    styled = judge.judge(answers)
    out = []
    for q, a, stop, in_char in zip(questions, answers, stopped, styled, strict=True):
        v: dict[str, Any] = {
            "id": q.id,
            "kind": q.kind,
            "in_character": in_char if q.kind == "persona" else None,
            "leak": leaks(a, markers),
            "on_topic": on_topic(a, q.topic),
            "stopped": bool(stop),
            "looping": looping_phrase(a) is not None,
        }
        whole = v["stopped"] and not v["looping"] and not v["leak"] and v["on_topic"] is not False
        v["good"] = bool(whole and (q.kind == "general" or in_char))
        out.append(v)
    return out


def persona_rates(
    questions: list[Question], answers: list[str], verdicts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rates over the persona questions and over the general ones (None where there are none)."""
    out: dict[str, Any] = {}
    for kind, prefix in (("persona", ""), ("general", "general_")):
        idx = [i for i, q in enumerate(questions) if q.kind == kind]
        if not idx:
            continue
        vs = [verdicts[i] for i in idx]
        texts = [answers[i] for i in idx]
        refs = [(answers[i], questions[i].reference) for i in idx if questions[i].reference]
        rates = {
            "questions": len(idx),
            "good_rate": _rate([v["good"] for v in vs]),
            "on_topic_rate": _rate([v["on_topic"] for v in vs]),
            "stop_rate": _rate([v["stopped"] for v in vs]),
            "loop_rate": _rate([v["looping"] for v in vs]),
            "leak_rate": _rate([v["leak"] for v in vs]),
            "distinct2": distinct_n(texts, 2),
            "mean_chars": sum(len(t) for t in texts) / len(texts),
            "rougeL_char": rouge(*zip(*refs, strict=True), chars)["rougeL"] if refs else None,
        }
        if kind == "persona":
            rates["in_character_rate"] = _rate([v["in_character"] for v in vs])
        out.update({prefix + k: v for k, v in rates.items()})
    return out
