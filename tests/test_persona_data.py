"""The held-out Zhen Huan question set and the calibration text: shape, keywords, no leakage.

Fast and torch-free. The leakage checks compare every question with every training instruction and every
reference with every training output; they run only where the Huanhuan data set is present.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "examples" / "data" / "zhenhuan_questions.jsonl"
ASSISTANT_VOICE = REPO / "src" / "tunesmith" / "evaluation" / "data" / "assistant_voice.jsonl"
PLAIN_VOICE = REPO / "src" / "tunesmith" / "evaluation" / "data" / "plain_voice.jsonl"
HUANHUAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "huanhuan.json"

QUESTION_KEYS = {"id", "kind", "question", "topic", "reference"}
GENERIC_WORDS = {"她", "皇上", "本宫", "臣妾", "娘娘", "是", "的"}
PALACE_WORDS = ("本宫", "臣妾", "嫔妾", "皇上", "娘娘", "奴婢", "小主", "朕")
PLAIN_BANNED = (*PALACE_WORDS, "宫", "皇", "以下是", "希望对你有帮助", "AI助手", "人工智能助手", "语言模型")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path.name}:{n}: blank line"
        rows.append(json.loads(line))
    return rows


def _bare(text: str) -> str:
    """Text without punctuation, symbols or whitespace."""
    return "".join(c for c in text if not unicodedata.category(c).startswith(("P", "S", "Z", "C")))


def _grams(text: str) -> frozenset[str]:
    text = _bare(text)
    if len(text) < 3:
        return frozenset([text]) if text else frozenset()
    return frozenset(text[i : i + 3] for i in range(len(text) - 2))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return _read_jsonl(QUESTIONS)


def test_question_file_shape(questions):
    assert all(set(q) == QUESTION_KEYS for q in questions)
    kinds = Counter(q["kind"] for q in questions)
    assert kinds == {"persona": 48, "general": 12}
    ids = [q["id"] for q in questions]
    assert len(set(ids)) == len(ids)
    assert {q["id"] for q in questions if q["kind"] == "persona"} == {f"p{i:02d}" for i in range(1, 49)}
    assert {q["id"] for q in questions if q["kind"] == "general"} == {f"g{i:02d}" for i in range(1, 13)}
    assert len({_bare(q["question"]) for q in questions}) == len(questions), "duplicate question"
    for q in questions:
        assert isinstance(q["question"], str) and q["question"].strip(), q["id"]
        assert isinstance(q["topic"], list) and 2 <= len(q["topic"]) <= 6, q["id"]
        assert all(isinstance(k, str) and k.strip() for k in q["topic"]), q["id"]
        assert len(set(q["topic"])) == len(q["topic"]), q["id"]
        assert not GENERIC_WORDS & set(q["topic"]), q["id"]
        assert 15 <= len(_bare(q["reference"])) <= 80, (q["id"], len(_bare(q["reference"])))


def test_each_reference_contains_its_own_topic(questions):
    for q in questions:
        assert any(k in q["reference"] for k in q["topic"]), (q["id"], q["topic"], q["reference"])


def test_topic_keywords_are_specific(questions):
    """A keyword of one question shows up in at most three other questions' references."""
    for q in questions:
        for k in q["topic"]:
            others = [o["id"] for o in questions if o["id"] != q["id"] and k in o["reference"]]
            assert len(others) <= 3, (q["id"], k, others)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "zhenhuan_roleplay.json"


@pytest.mark.parametrize(
    "source, limit",
    [
        pytest.param(
            HUANHUAN, 0.5, marks=pytest.mark.skipif(not HUANHUAN.exists(), reason="no huanhuan.json")
        ),
        (EXAMPLE, 0.3),  # the quickstart trains on it: not even a paraphrase may come close
    ],
    ids=["huanhuan", "example"],
)
def test_nothing_is_taken_from_the_training_data(questions, source, limit):
    records = json.loads(source.read_text(encoding="utf-8"))
    pairs = (("question", "instruction"), ("reference", "output"))
    for ours, theirs in pairs:
        texts = [_bare(r[theirs]) for r in records]
        grams = [_grams(t) for t in texts]
        for q in questions:
            mine = _bare(q[ours])
            mine_grams = _grams(mine)
            best = max(_jaccard(mine_grams, g) for g in grams)
            assert best < limit, (q["id"], ours, best)
            for t in texts:
                if len(t) >= 6:
                    assert mine not in t and t not in mine, (q["id"], ours, t)


def test_assistant_voice_file():
    rows = _read_jsonl(ASSISTANT_VOICE)
    assert all(set(r) == {"lang", "text"} for r in rows)
    assert Counter(r["lang"] for r in rows) == {"zh": 240, "en": 60}
    texts = [r["text"] for r in rows]
    assert all(isinstance(t, str) and 8 <= len(t) <= 150 for t in texts), [
        t for t in texts if not 8 <= len(t) <= 150
    ]
    assert len({_bare(t).lower() for t in texts}) == len(texts), "duplicate text"
    assert not [t for t in texts if any(w in t for w in PALACE_WORDS)]


def test_plain_voice_file():
    rows = _read_jsonl(PLAIN_VOICE)
    assert all(set(r) == {"lang", "text"} for r in rows)
    assert Counter(r["lang"] for r in rows) == {"zh": 220, "en": 80}
    texts = [r["text"] for r in rows]
    assert all(isinstance(t, str) and t == t.strip() and 6 <= len(t) <= 120 for t in texts), [
        t for t in texts if not 6 <= len(t) <= 120
    ]
    assert len({_bare(t).lower() for t in texts}) == len(texts), "duplicate text"
    assert not [t for t in texts if any(w in t for w in PLAIN_BANNED)]
    assert not [t for t in texts if "as an ai" in t.lower() or "language model" in t.lower()]


def test_plain_voice_has_no_near_duplicates():
    """No two plain-voice lines, nor a plain and an assistant-voice line, share most of their trigrams."""
    plain = [r["text"] for r in _read_jsonl(PLAIN_VOICE)]
    assistant = [r["text"] for r in _read_jsonl(ASSISTANT_VOICE)]
    grams = [_grams(t.lower()) for t in plain]
    for i, a in enumerate(grams):
        for j in range(i + 1, len(grams)):
            assert _jaccard(a, grams[j]) < 0.5, (plain[i], plain[j])
    assistant_grams = [_grams(t.lower()) for t in assistant]
    for t, a in zip(plain, grams, strict=True):
        assert max(_jaccard(a, b) for b in assistant_grams) < 0.5, t
