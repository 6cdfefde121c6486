import json
import logging

import pytest

from conftest import write_json
from tunesmith.data.convert import convert_file, import_label_studio, to_format, write_records
from tunesmith.data.formats import load_records
from tunesmith.errors import ConfigError, DatasetError

MULTI = [
    {"role": "system", "content": "你是甄嬛。"},
    {"role": "user", "content": "你是谁？"},
    {"role": "assistant", "content": "嫔妾甄嬛。"},
    {"role": "user", "content": "皇上呢？"},
    {"role": "assistant", "content": "皇上在养心殿。"},
]
SINGLE = [{"role": "user", "content": "翻译：hello"}, {"role": "assistant", "content": "你好"}]


def test_to_format_shapes():
    assert to_format(MULTI, "alpaca") == {
        "instruction": "皇上呢？",
        "input": "",
        "output": "皇上在养心殿。",
        "system": "你是甄嬛。",
        "history": [["你是谁？", "嫔妾甄嬛。"]],
    }
    assert to_format(SINGLE, "alpaca") == {"instruction": "翻译：hello", "input": "", "output": "你好"}
    assert [m["from"] for m in to_format(MULTI, "sharegpt")["conversations"]] == [
        "system",
        "human",
        "gpt",
        "human",
        "gpt",
    ]
    assert to_format(MULTI, "messages") == {"messages": MULTI}


@pytest.mark.parametrize("fmt, name", [("alpaca", "o.json"), ("sharegpt", "o.jsonl"), ("messages", "o.json")])
def test_round_trip_through_files(tmp_path, fmt, name):
    out = tmp_path / name
    write_records([to_format(c, fmt) for c in (MULTI, SINGLE)], out, fmt)
    assert load_records(out) == [MULTI, SINGLE]
    assert load_records(out, fmt=fmt) == [MULTI, SINGLE]
    text = out.read_text(encoding="utf-8")
    assert "甄嬛" in text  # ensure_ascii=False
    if name.endswith(".jsonl"):
        assert len(text.splitlines()) == 2


def test_csv_round_trip_and_system_column(tmp_path):
    out = tmp_path / "o.csv"
    write_records([to_format(SINGLE, "csv")], out, "csv")
    assert out.read_text(encoding="utf-8").splitlines()[0] == "instruction,input,output"
    assert load_records(out) == [SINGLE]
    with_system = [{"role": "system", "content": "s"}, *SINGLE]
    write_records([to_format(SINGLE, "csv"), to_format(with_system, "csv")], out, "csv")
    assert out.read_text(encoding="utf-8").splitlines()[0] == "instruction,input,output,system"
    assert load_records(out) == [SINGLE, with_system]


def test_multi_turn_cannot_go_to_csv(tmp_path):
    out = tmp_path / "o.csv"
    with pytest.raises(DatasetError, match=r"o\.csv, record 1: a multi-turn conversation \(1 earlier turn"):
        write_records([to_format(SINGLE, "csv"), to_format(MULTI, "csv")], out, "csv")
    assert not out.exists()
    rec = {**to_format(SINGLE, "alpaca"), "id": 7}
    with pytest.raises(DatasetError, match=r"record 0: field\(s\) id have no CSV column"):
        write_records([rec], out, "csv")


def test_write_records_refuses_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="unknown output format 'yaml'; choose one of: alpaca, csv"):
        write_records([to_format(SINGLE, "alpaca")], tmp_path / "o.json", "yaml")
    with pytest.raises(DatasetError, match=r"format 'csv' is written to a \.csv file"):
        write_records([to_format(SINGLE, "alpaca")], tmp_path / "o.json", "csv")
    with pytest.raises(DatasetError, match=r"format 'alpaca' is written to a \.json or \.jsonl file"):
        write_records([to_format(SINGLE, "alpaca")], tmp_path / "o.csv", "alpaca")
    with pytest.raises(DatasetError, match="no records to write"):
        write_records([], tmp_path / "o.json", "alpaca")
    with pytest.raises(DatasetError, match=r"record 0: cannot write this sharegpt record: missing field"):
        write_records([to_format(SINGLE, "alpaca")], tmp_path / "o.json", "sharegpt")
    with pytest.raises(DatasetError, match="cannot convert the conversation: conversation must end with an"):
        to_format(SINGLE[:1], "alpaca")


def test_convert_file(tmp_path):
    src = write_json(tmp_path / "in.json", [to_format(MULTI, "alpaca"), to_format(SINGLE, "alpaca")])
    assert convert_file(src, tmp_path / "out.jsonl", "sharegpt") == 2
    assert load_records(tmp_path / "out.jsonl") == [MULTI, SINGLE]
    with pytest.raises(DatasetError, match=r"out\.csv, record 0: a multi-turn"):
        convert_file(src, tmp_path / "out.csv", "csv")


# --- Label Studio -----------------------------------------------------------------------------
# A small export as Label Studio writes it ("Export" -> "JSON"), trimmed of nothing important.


def _result(kind, value, from_name, rid):
    key = "text" if kind == "textarea" else "choices"
    return {
        "value": {key: [value]},
        "id": rid,
        "from_name": from_name,
        "to_name": "prompt",
        "type": kind,
        "origin": "manual",
    }


def _annotation(aid, task_id, user, results, cancelled=False):
    return {
        "id": aid,
        "completed_by": user,
        "result": results,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2024-05-02T08:13:44.123456Z",
        "updated_at": "2024-05-02T08:14:02.654321Z",
        "draft_created_at": None,
        "lead_time": 18.204,
        "prediction": {},
        "result_count": len(results),
        "unique_id": f"5c0b1f2e-{aid:04d}",
        "import_id": None,
        "last_action": None,
        "task": task_id,
        "project": 3,
        "updated_by": user,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def _task(tid, prompt, annotations, **data):
    return {
        "id": tid,
        "annotations": annotations,
        "file_upload": "8d1c2a7f-prompts.json",
        "drafts": [],
        "predictions": [],
        "data": {"prompt": prompt, **data},
        "meta": {},
        "created_at": "2024-05-01T10:00:00.000000Z",
        "updated_at": "2024-05-02T08:14:02.700000Z",
        "inner_id": tid - 40,
        "total_annotations": sum(not a["was_cancelled"] for a in annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 3,
        "updated_by": 1,
        "comment_authors": [],
    }


def ls_pairs_export():
    return [
        _task(41, "你是谁？", [_annotation(1, 41, 1, [_result("textarea", "嫔妾甄嬛。", "answer", "a1")])]),
        _task(
            42,
            "皇上今天来了吗？",
            [
                _annotation(2, 42, 1, [], cancelled=True),
                _annotation(3, 42, 2, [_result("textarea", "皇上在养心殿批折子。", "answer", "a2")]),
                _annotation(4, 42, 3, [_result("textarea", "不曾来。", "answer", "a3")]),
            ],
        ),
        _task(43, "今晚吃什么？", [_annotation(5, 43, 1, [], cancelled=True)]),
        _task(44, "还没标注的问题", []),
        _task(45, "空答案", [_annotation(6, 45, 2, [])]),
    ]


def test_label_studio_pairs_with_report(tmp_path, caplog):
    p = write_json(tmp_path / "project-3-at-2024-05-02.json", ls_pairs_export())
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        records, report = import_label_studio(p)
    assert records == [
        {"instruction": "你是谁？", "input": "", "output": "嫔妾甄嬛。"},
        {"instruction": "皇上今天来了吗？", "input": "", "output": "皇上在养心殿批折子。"},
    ]
    assert (
        report["mode"] == "pairs"
        and report["prompt_field"] == "prompt"
        and report["answer_field"] == "answer"
    )
    assert report["tasks"] == 5 and report["records"] == 2
    assert report["skipped"] == {"cancelled": 1, "unannotated": 1, "no_answer": 1}
    assert report["skipped_ids"] == {"cancelled": ["43"], "unannotated": ["44"], "no_answer": ["45"]}
    assert report["extra_annotations"] == 1
    json.dumps(report)
    assert any("skipped" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    out = tmp_path / "train.json"
    write_records(records, out, "alpaca")
    assert len(load_records(out)) == 2


def test_label_studio_classification(tmp_path):
    tasks = [
        _task(1, "太好吃了", [_annotation(1, 1, 1, [_result("choices", "positive", "sentiment", "c1")])]),
        _task(2, "难吃", [_annotation(2, 2, 1, [_result("choices", "negative", "sentiment", "c2")])]),
    ]
    p = write_json(tmp_path / "cls.json", tasks)
    records, report = import_label_studio(p)
    assert records == [{"text": "太好吃了", "label": "positive"}, {"text": "难吃", "label": "negative"}]
    assert report["mode"] == "classification"
    assert import_label_studio(p, mode="classification")[0] == records
    with pytest.raises(
        DatasetError, match=r"no textarea controls among the results \(controls found: sentiment"
    ):
        import_label_studio(p, mode="pairs")
    tasks[1]["annotations"][0]["result"][0]["value"]["choices"].append("positive")
    write_json(p, tasks)
    with pytest.raises(DatasetError, match=r"cls\.json, record 1: task id 2: 2 choices selected"):
        import_label_studio(p)


def test_label_studio_errors(tmp_path):
    tasks = ls_pairs_export()
    tasks[0]["data"]["source"] = "weibo"
    tasks[1]["data"]["source"] = "douban"
    tasks[0]["data"]["text"] = "only this task has a 'text' field"
    p = write_json(tmp_path / "x.json", tasks[:2])
    with pytest.raises(
        DatasetError, match=r"string fields in every task: prompt, source\); pass prompt_field"
    ):
        import_label_studio(p)
    assert import_label_studio(p, prompt_field="prompt")[1]["records"] == 2
    with pytest.raises(DatasetError, match=r"record 1: task id 42: data field 'text' is missing"):
        import_label_studio(p, prompt_field="text", answer_field="answer")
    with pytest.raises(
        DatasetError, match=r"no textarea/choices results named 'reply'; controls found: answer"
    ):
        import_label_studio(p, answer_field="reply")
    with pytest.raises(ConfigError, match="unknown Label Studio import mode 'qa'"):
        import_label_studio(p, mode="qa")
    minimal = write_json(tmp_path / "min.json", [{"id": 1, "prompt": "q", "answer": "a", "annotator": 1}])
    with pytest.raises(DatasetError, match=r"record 0: task id 1: not a Label Studio task.*not JSON-MIN"):
        import_label_studio(minimal)
