import json

import pytest

from conftest import write_json
from tunesmith.data import load_records, split_records
from tunesmith.errors import ConfigError, DatasetError


def test_alpaca_with_input_system_history(tmp_path):
    p = write_json(
        tmp_path / "a.json",
        [
            {
                "instruction": "翻译",
                "input": "hello",
                "output": "你好",
                "system": "sys",
                "history": [["q1", "a1"]],
            },
            {"instruction": "你是谁？", "input": "", "output": "我是甄嬛。"},
        ],
    )
    convs = load_records(p, system_prompt="扮演甄嬛")
    assert convs[0] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "翻译\nhello"},
        {"role": "assistant", "content": "你好"},
    ]
    assert convs[1][0] == {"role": "system", "content": "扮演甄嬛"}  # added only where missing
    assert convs[1][1:] == [
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "我是甄嬛。"},
    ]


def test_sharegpt_and_messages_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    rows = [
        {
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
            "system": "s",
        },
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    convs = load_records(p)
    assert convs[0][0] == {"role": "system", "content": "s"}
    assert [m["role"] for m in convs[0]] == ["system", "user", "assistant"]
    assert convs[1] == rows[1]["messages"]


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"instruction": "q"}, "missing field 'output'"),
        ({"instruction": "q", "output": 3}, "field 'output' must be a string"),
        ({"instruction": "q", "output": "  "}, "field 'output' is empty"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "turn 1 has role 'user', expected 'assistant'",
        ),
        ({"messages": [{"role": "user", "content": "a"}]}, "must end with an assistant turn"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from is 'alien'"),
        ({"text": "plain"}, "cannot tell the format"),
    ],
)
def test_bad_record_names_file_index_and_field(tmp_path, record, fragment):
    good = {"instruction": "q", "output": "a"}
    p = write_json(tmp_path / "bad.json", [good, good, record])
    with pytest.raises(DatasetError) as e:
        load_records(p)
    assert str(p) in str(e.value) and "record 2" in str(e.value) and fragment in str(e.value)
    assert e.value.index == 2


def test_jsonl_errors_give_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"instruction": "q", "output": "a"}\n{broken\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"x.jsonl: line 2: invalid JSON"):
        load_records(p)
    p.write_text('{"instruction": "q", "output": "a"}\n\n{"instruction": "q"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"record 1: missing field 'output'.*\(line 3\)"):
        load_records(p)


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_records(tmp_path / "nope.json")
    p = write_json(tmp_path / "o.json", {"instruction": "q"})
    with pytest.raises(DatasetError, match="expected a JSON array"):
        load_records(p)
    with pytest.raises(ConfigError, match="unknown data format 'csv'"):
        load_records(write_json(tmp_path / "ok.json", [{"instruction": "q", "output": "a"}]), fmt="csv")


def test_split_is_deterministic_and_keeps_duplicate_prompts_together():
    convs = [
        [{"role": "user", "content": f"q{i % 40}"}, {"role": "assistant", "content": f"a{i}"}]
        for i in range(200)
    ]
    train, val = split_records(convs, 0.1, seed=1)
    assert (train, val) == split_records(convs, 0.1, seed=1)
    assert len(train) + len(val) == 200 and 15 <= len(val) <= 30
    prompts_train = {c[0]["content"] for c in train}
    assert not prompts_train & {c[0]["content"] for c in val}
    assert split_records(convs, 0.1, seed=2)[1] != val
    assert split_records(convs, 0.0, seed=1) == (convs, [])


def test_take_first_n_or_a_seeded_sample():
    from tunesmith.data import take

    items = list(range(100))
    assert take(items, limit=5) == [0, 1, 2, 3, 4]
    a, b = take(items, sample=10, seed=1), take(items, sample=10, seed=1)
    assert a == b and len(set(a)) == 10 and a == sorted(a)  # same seed: same subset, file order
    assert take(items, sample=10, seed=2) != a  # another seed: another subset
    assert a != items[:10]  # spread over the file, not its opening
    assert take(items, sample=500) == items and take(items) == items


def test_training_data_sample_is_seeded_and_spread(tmp_path):
    from tunesmith.config import load_config
    from tunesmith.training.lm import load_training_data

    p = write_json(tmp_path / "d.json", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)])
    cfg = load_config(None, ["model.source=m", f"data.path={p}", "data.sample=8", "data.seed=3"])
    first, _ = load_training_data(cfg)
    again, _ = load_training_data(cfg)
    assert first == again and len(first) == 8
    assert [c[0]["content"] for c in first] != [f"q{i}" for i in range(8)]
