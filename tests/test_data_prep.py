"""inspect / clean / split and the `tunesmith data` CLI."""

import json

import pytest

from conftest import EXAMPLE_DATA, SHARED_HUANHUAN, write_json
from tunesmith.cli.main import main
from tunesmith.config import ConfigError
from tunesmith.data.clean import CleanRecipe, clean_file, clean_records, load_recipe
from tunesmith.data.formats import read_raw
from tunesmith.data.inspect import inspect_file
from tunesmith.data.split import split_file
from tunesmith.errors import DatasetError


def rec(q, a, **kw):
    return {"instruction": q, "input": "", "output": a, **kw}


@pytest.mark.skipif(not SHARED_HUANHUAN.is_file(), reason="huanhuan.json not present beside the repo")
def test_inspect_matches_independent_count_on_huanhuan():
    rep = inspect_file(SHARED_HUANHUAN)
    assert rep["records"] == 3729 and rep["invalid_records"] == 0
    assert rep["duplicates"]["exact_duplicate_records"] == 112
    assert rep["duplicates"]["duplicate_answers"] == 292
    assert rep["duplicates"]["duplicate_prompts"] == 238
    assert rep["fields"]["input"]["empty"] == 3729
    assert rep["fields"]["output"]["empty"] == 0
    assert rep["text"]["looping_answers"] == 7
    assert rep["lengths_chars"]["prompt"] == {"min": 2, "median": 23, "p95": 77.0, "max": 283, "mean": 29.3}
    assert rep["lengths_chars"]["answer"] == {"min": 2, "median": 20, "p95": 75.0, "max": 208, "mean": 27.1}


SAMPLES = [
    rec("你是谁？", "我是甄嬛，家父是大理寺少卿甄远道。"),
    rec("你是谁？", "我是甄嬛，家父是大理寺少卿甄远道。"),  # exact duplicate
    rec("你是谁?", "我是甄嬛, 家父是大理寺少卿甄远道!!"),  # near duplicate (punctuation)
    rec("说说看", "我愿尽尽义务。我愿尽尽义务。我愿尽尽义务。"),  # looping
    rec("控制", "有\x07控制字符\u200b"),  # control chars (cleaned, kept)
    rec("mojibake", "ä½\xa0å¥½ï¼Œç”„å¬›"),  # "你好，甄嬛" decoded as Windows-1252
    rec("mixed", "Привет 你好"),  # unusual script mix
    rec("ＦＵＬＬ　ｗｉｄｔｈ", "全角字母ＡＢＣ，标点保留。"),
    rec("空的", "   "),  # empty answer after whitespace cleanup
    {"instruction": "缺少答案"},  # missing field
    "not an object",
]


def test_inspect_finds_every_kind_of_problem(tmp_path):
    p = write_json(tmp_path / "d.json", SAMPLES)
    rep = inspect_file(p, token_count=lambda conv: sum(len(m["content"]) for m in conv), max_length=10)
    assert rep["records"] == 11 and rep["invalid_records"] == 3
    assert rep["duplicates"]["exact_duplicate_records"] == 1
    assert rep["duplicates"]["near_duplicate_clusters"] == 1
    assert sorted(rep["duplicates"]["near_duplicate_examples"][0]) == [0, 1, 2]
    assert rep["text"]["looping_answers"] == 1 and rep["text"]["looping_examples"][0][0] == 3
    assert rep["text"]["control_char_examples"] == [4]
    assert rep["text"]["mojibake_examples"] == [5]
    assert rep["text"]["mixed_script_examples"] == [6]
    assert rep["fields"]["output"]["missing"] == 2  # the missing field and the non-object
    assert rep["lengths_tokens"]["over_max_length"] > 0
    assert sum(rep["histograms"]["answer_chars"]["counts"]) == 8


def test_clean_counts_every_removal_and_keeps_them(tmp_path):
    p = write_json(tmp_path / "d.json", SAMPLES)
    out = tmp_path / "clean.json"
    rep = clean_file(p, out)
    assert rep["removed"] == {
        "exact_duplicate": 1,
        "invalid": 1,
        "looping_phrase": 1,
        "missing_value": 2,
        "near_duplicate": 1,
    }
    assert rep["input_records"] == 11 and rep["output_records"] == 5
    kept = json.loads(out.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in kept] == ["你是谁？", "控制", "mojibake", "mixed", "FULL width"]
    assert kept[1]["output"] == "有控制字符"
    assert kept[2]["output"] == "你好，甄嬛"
    assert kept[4]["output"] == "全角字母ABC，标点保留。"  # letters folded, CJK punctuation kept
    removed = [json.loads(x) for x in (tmp_path / "clean.removed.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in removed) == [1, 2, 3, 8, 9, 10]
    assert {r["index"]: r.get("duplicate_of") for r in removed}[1] == 0
    report = json.loads((tmp_path / "clean.report.json").read_text())
    assert report["fingerprint"] == rep["fingerprint"]
    assert clean_file(p, tmp_path / "again.json")["fingerprint"] == rep["fingerprint"]  # deterministic


def test_recipe_options(tmp_path):
    raw = [(None, rec("繁體", "這是臺灣的書")), (None, rec("q", "   ")), (None, rec("長", "x" * 50))]
    res = clean_records(raw, CleanRecipe(to_simplified=True, missing="fill", fill_value="（无）",
                                         max_answer_chars=20))  # fmt: skip
    assert res.records[0]["output"] == "这是台湾的书"
    assert res.records[1]["output"] == "（无）"
    assert res.report["removed"] == {"too_long": 1}
    kept = clean_records([(None, rec("q", "孩子……　ＯＫ"))]).records[0]["output"]
    assert kept == "孩子…… OK"  # ellipsis kept, ideographic space and full-width letters folded
    nfkc = clean_records([(None, rec("q", "标点，"))], CleanRecipe(unicode="nfkc"))
    assert nfkc.records[0]["output"] == "标点,"


def test_recipe_file_is_validated(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("near_treshold: 0.9\nloop_filter: maybe\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_recipe(bad)
    assert "did you mean `near_threshold`" in str(e.value) and "`loop_filter`: expected true or false" in str(
        e.value
    )
    good = tmp_path / "g.yaml"
    good.write_text("near_dedup: false\n", encoding="utf-8")
    assert load_recipe(good).near_dedup is False


def test_clean_that_removes_everything_leaves_existing_output_alone(tmp_path):
    p = write_json(tmp_path / "d.json", [rec("q", "  ")])
    out = tmp_path / "out.json"
    out.write_text("previous", encoding="utf-8")
    with pytest.raises(DatasetError, match="removed every record"):
        clean_file(p, out)
    assert out.read_text(encoding="utf-8") == "previous"


def test_split_keeps_near_duplicates_together_and_stratifies(tmp_path):
    rows = []
    for i in range(60):
        base = f"第{i}个问题关于宫中的事情和{i * 7}件别的事"
        rows.append({"text": base, "label": "a" if i % 3 else "b"})
        if i % 4 == 0:
            rows.append({"text": base + "！", "label": "a" if i % 3 else "b"})  # near duplicate
    p = write_json(tmp_path / "cls.json", rows)
    rep = split_file(p, tmp_path / "out", val_fraction=0.25, seed=3, stratify="label")
    train = json.loads((tmp_path / "out" / "train.json").read_text(encoding="utf-8"))
    val = json.loads((tmp_path / "out" / "val.json").read_text(encoding="utf-8"))
    assert len(train) + len(val) == len(rows) == rep["records"]
    stems = lambda rs: {r["text"].rstrip("！") for r in rs}  # noqa: E731
    assert not stems(train) & stems(val)
    for label, counts in rep["strata"].items():
        total = counts["train"] + counts["val"]
        assert abs(counts["val"] / total - 0.25) < 0.1, label
    again = split_file(p, tmp_path / "out2", val_fraction=0.25, seed=3, stratify="label")
    assert again == {**rep} or again["val"] == rep["val"]
    with pytest.raises(DatasetError, match="stratify field 'topic' is missing"):
        split_file(p, tmp_path / "o3", stratify="topic")


def test_data_cli_commands(tmp_path, capsys):
    src = write_json(tmp_path / "d.json", SAMPLES[:8])
    assert main(["data", "inspect", str(src), "--json", "--html", str(tmp_path / "r.html")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["records"] == 8 and "<svg" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert main(["data", "clean", str(src), "-o", str(tmp_path / "c.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_records"] == 5
    assert len(read_raw(tmp_path / "c.jsonl")) == 5
    assert main(["data", "split", str(EXAMPLE_DATA), "-o", str(tmp_path / "s"), "--val", "0.2"]) == 0
    assert "train" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "convert",
                str(tmp_path / "c.jsonl"),
                "-o",
                str(tmp_path / "m.jsonl"),
                "--to",
                "messages",
            ]
        )
        == 0
    )
    assert "messages" in read_raw(tmp_path / "m.jsonl")[0][1]
    capsys.readouterr()
    csv = tmp_path / "ann.csv"
    csv.write_text("item,ann1,ann2\n1,pos,pos\n2,neg,pos\n3,neg,neg\n4,pos,pos\n", encoding="utf-8")
    assert main(["data", "agree", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["statistic"].lower().startswith("cohen")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "empty"), ("你好".encode("gbk") * 200, "not UTF-8"), (b'[{"instruction": "q",]', "line 1 column")],
)
def test_data_cli_bad_input_is_a_clear_error(tmp_path, capsys, content, fragment):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    assert main(["data", "inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and str(p) in err
