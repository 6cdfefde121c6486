"""Persona metrics: each judgement on hand-made answers, the judge's calibration, eval wiring."""

import json

import pytest

from conftest import EXAMPLE_DATA, write_json
from threads import one_thread
from tunesmith.cli.eval import summary
from tunesmith.errors import DatasetError
from tunesmith.evaluation import EvalOptions, answer_perplexity, run_eval
from tunesmith.evaluation.persona import (
    Question,
    fit_style_judge,
    generic_lines,
    judge_answers,
    leaks,
    load_questions,
    on_topic,
    persona_rates,
    topic_calibration,
)
from tunesmith.runtime.chatbot import load_chatbot

RECORDS = json.loads(EXAMPLE_DATA.read_text(encoding="utf-8"))
PERSONA = [r["output"] for r in RECORDS]
QUESTIONS = [
    Question("p1", "persona", "你怎么看华妃？", ["华妃", "年氏"], "华妃娘娘性子骄纵，臣妾只求安稳度日。"),
    Question("p2", "persona", "海棠开了吗？", ["海棠", "花"], "碎玉轩的海棠开得正好，皇上可要去瞧瞧？"),
    Question("g1", "general", "一年有几个季节？", ["四", "4"], "一年有四季。"),
]


@pytest.fixture(scope="module")
def judge():
    return fit_style_judge(PERSONA, generic_lines())


def test_judge_is_calibrated_on_held_out_lines(judge):
    cal = judge.calibration
    assert cal["persona_heldout_n"] >= 30 and cal["generic_heldout_n"] >= 30
    assert cal["persona_heldout"] >= 0.9  # measured on lines the judge was not trained on
    assert cal["generic_heldout"] <= 0.1
    assert judge.judge(["臣妾给皇上请安，皇上万福金安。"]) == [True]
    assert judge.judge(["作为一个人工智能助手，我很高兴为您提供帮助。"]) == [False]


def test_each_rate_can_be_zero_and_one(judge):
    good = [
        "华妃娘娘骄纵，臣妾只求安稳。",
        "海棠开得正好，皇上可要去碎玉轩瞧瞧？",
        "一年有四季，春夏秋冬。",
    ]
    bad = [
        "作为一个人工智能助手，我很高兴为您解答问题。",
        "好的，以下是一些建议：多喝水，早睡早起，希望对你有帮助。",
        "这是一个好问题！这是一个好问题！这是一个好问题！这是一个好问题！",
    ]
    v_good = judge_answers(QUESTIONS, good, [True] * 3, judge)
    v_bad = judge_answers(QUESTIONS, bad, [False] * 3, judge)
    r_good, r_bad = persona_rates(QUESTIONS, good, v_good), persona_rates(QUESTIONS, bad, v_bad)
    assert r_good["good_rate"] == 1 and r_bad["good_rate"] == 0
    assert r_good["in_character_rate"] == 1 and r_bad["in_character_rate"] == 0
    assert r_good["on_topic_rate"] == 1 and r_bad["on_topic_rate"] == 0
    assert r_good["stop_rate"] == 1 and r_bad["stop_rate"] == 0
    assert r_good["leak_rate"] == 0 and r_bad["leak_rate"] == 1
    assert r_good["general_good_rate"] == 1 and r_bad["general_good_rate"] == 0
    assert r_good["loop_rate"] == 0 and r_bad["general_loop_rate"] == 1
    assert r_good["questions"] == 2 and r_good["general_questions"] == 1


def test_good_needs_every_part(judge):
    """In character but cut off, or stopped but off topic, is not a good answer."""
    answer = ["华妃娘娘骄纵，臣妾只求安稳。"]
    q = QUESTIONS[:1]
    assert judge_answers(q, answer, [True], judge)[0]["good"]
    assert not judge_answers(q, answer, [False], judge)[0]["good"]
    off = judge_answers(q, ["皇上，你来吧。"], [True], judge)[0]
    assert off["in_character"] and off["on_topic"] is False and not off["good"]


def test_rules_on_their_own():
    assert leaks("As an AI language model, I cannot") and not leaks("臣妾不敢。")
    assert on_topic("一年有4季", ["四", "4"]) and on_topic("无关", ["四"]) is False
    assert on_topic("什么都行", []) is None
    cal = topic_calibration(QUESTIONS)
    assert cal["own_reference"] == 1 and cal["other_reference"] == 0


def test_shipped_question_file_loads_and_its_topic_rule_separates():
    qs = load_questions("examples/data/zhenhuan_questions.jsonl")
    assert sum(q.kind == "persona" for q in qs) >= 40 and any(q.kind == "general" for q in qs)
    cal = topic_calibration(qs)
    assert cal["own_reference"] >= 0.95 and cal["other_reference"] <= 0.05


def test_question_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "你好"}\n{"kind": "persona"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"q.jsonl, record 1: line 2: 'question' must be non-empty"):
        load_questions(p)
    p.write_text('{"question": "你好", "kind": "chat"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="'kind' must be one of persona, general"):
        load_questions(p)
    p.write_text('{"question": "你好"\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="q.jsonl: line 1: invalid JSON"):
        load_questions(p)
    with pytest.raises(DatasetError, match="not found"):
        load_questions(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="at least 10 distinct persona answers"):
        fit_style_judge(["是。"] * 50, generic_lines())


def test_eval_persona_questions_alone(tiny_run, tmp_path):
    qs = [
        {
            "id": f"p{i}",
            "kind": "persona",
            "question": r["instruction"],
            "topic": ["甄"],
            "reference": r["output"],
        }
        for i, r in enumerate(RECORDS[50:54])
    ] + [
        {
            "id": "g1",
            "kind": "general",
            "question": "一年有几个季节？",
            "topic": ["四"],
            "reference": "四季。",
        }
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    opts = EvalOptions(out_dir=tmp_path / "out", samples=2, batch_size=8, progress=False, persona=qfile)
    with one_thread():
        res = run_eval(tiny_run, None, opts)
    p = res.metrics["persona"]
    assert res.metrics["data"]["records"] == 5  # the questions are the data
    assert set(p["models"]) == {"base", "fine_tuned"}
    for side in p["models"].values():
        assert side["questions"] == 4 and side["general_questions"] == 1
        assert 0 <= side["in_character_rate"] <= 1 and 0 <= side["good_rate"] <= 1
    assert p["calibration"]["in_character"]["persona_heldout_n"] > 0
    assert len(p["answers"]) == 5 and p["answers"][0]["fine_tuned"] == res.metrics["samples"][0]["fine_tuned"]
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Persona" in md and "in-character judge" in md
    assert "persona_good_rate" in res.headline()
    text = summary(res.metrics, examples=2)
    assert "in character (judge)" in text and text.count("\nQ: ") == 2 and "tuned: " in text


def test_general_perplexity_is_measured_without_the_system_prompt(tiny_run, tmp_path):
    general = [
        {"instruction": "1+1=?", "output": "2"},
        {"instruction": "天空是什么颜色？", "output": "蓝色。"},
    ]
    gfile = write_json(tmp_path / "general.json", general)
    data = write_json(tmp_path / "eval.json", RECORDS[40:42])
    with one_thread():
        res = run_eval(
            tiny_run, data, EvalOptions(out_dir=tmp_path / "o", general=gfile, progress=False, samples=0)
        )
        bot = load_chatbot(tiny_run, device="cpu")
        assert bot.card.system_prompt  # the run has one, so leaving it out changes the numbers
        convs = [
            [{"role": "user", "content": g["instruction"]}, {"role": "assistant", "content": g["output"]}]
            for g in general
        ]
        plain = answer_perplexity(bot, convs, system_prompt=False)["perplexity"]
        with_sys = answer_perplexity(bot, convs)["perplexity"]
    assert res.metrics["models"]["fine_tuned"]["general_perplexity"] == pytest.approx(plain)
    assert plain != pytest.approx(with_sys)
