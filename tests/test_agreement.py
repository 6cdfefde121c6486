import json
import warnings

import pytest

from conftest import write_json
from test_convert import _annotation, _result, _task
from tunesmith.data.agreement import agreement_from_csv, agreement_from_label_studio, compute_agreement
from tunesmith.errors import DatasetError

# Fleiss (1971) example as reproduced on Wikipedia ("Fleiss' kappa", worked example): 10 items,
# 14 raters, 5 categories; counts of raters per category. P-bar = 0.378, P_e = 0.213,
# kappa = (0.378 - 0.213) / (1 - 0.213) = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _ratings_from_counts(table):
    # Fleiss' kappa treats raters as exchangeable, so any assignment of labels to raters works.
    return [[f"c{j + 1}" for j, n in enumerate(row) for _ in range(n)] for row in table]


def test_fleiss_textbook_example():
    ratings = _ratings_from_counts(FLEISS_TABLE)
    annotators = [f"r{i}" for i in range(14)]
    report = compute_agreement([f"s{i}" for i in range(1, 11)], ratings, annotators)
    assert report.statistic == "fleiss_kappa"
    assert report.kappa == pytest.approx(0.2099, abs=5e-4)
    assert report.percent_agreement == pytest.approx(0.378, abs=5e-4)
    assert (report.n_items, report.n_items_used, report.n_items_dropped) == (10, 10, 0)
    # Fleiss' per-category kappa, by hand for category 1: counts n = [0,0,0,0,2,7,3,2,6,0],
    # m = 14, N = 10, p = 20/140. sum n(m-n) = 24 + 49 + 33 + 24 + 48 = 178;
    # kappa_1 = 1 - 178 / (N m (m-1) p q) = 1 - 178 / (1820 * 1/7 * 6/7) = 1 - 178/222.857 = 0.2013.
    per_label = {x.label: x for x in report.per_label}
    assert per_label["c1"].kappa == pytest.approx(0.2013, abs=5e-4)
    assert per_label["c1"].count == 20 and per_label["c5"].count == 32
    assert len(report.pairwise) == 14 * 13 // 2
    assert len(report.disagreements) == 9  # every item but the unanimous first one


def test_cohen_two_raters_by_hand():
    # 50 items: both "yes" 20, both "no" 15, A yes / B no 5, A no / B yes 10.
    # p_o = 35/50 = 0.70; A says yes 25/50, B says yes 30/50;
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.50; kappa = (0.70 - 0.50) / (1 - 0.50) = 0.40.
    pairs = [("yes", "yes")] * 20 + [("no", "no")] * 15 + [("yes", "no")] * 5 + [("no", "yes")] * 10
    report = compute_agreement([str(i) for i in range(50)], [list(p) for p in pairs], ["A", "B"])
    assert report.statistic == "cohen_kappa"
    assert report.kappa == pytest.approx(0.40)
    assert report.percent_agreement == pytest.approx(0.70)
    assert [x.kappa for x in report.per_label] == [pytest.approx(0.40)] * 2  # binary: one-vs-rest = overall
    assert report.pairwise == [] and len(report.disagreements) == 15


THREE_LABEL_A = ["pos", "pos", "pos", "neg", "neg", "neg", "neu", "neu", "pos", "neg"]
THREE_LABEL_B = ["pos", "pos", "neg", "neg", "neg", "neu", "neu", "pos", "pos", "neg"]


def test_cohen_three_labels_and_one_vs_rest_by_hand():
    # Agreement on items 1,2,4,5,7,9,10: p_o = 0.7. A: pos 4, neg 4, neu 2; B: pos 4, neg 4, neu 2.
    # p_e = .4*.4 + .4*.4 + .2*.2 = 0.36; kappa = (0.7 - 0.36) / 0.64 = 0.53125.
    # "neu" vs rest: agree on 8 items, p_e = .2*.2 + .8*.8 = 0.68 -> (0.8 - 0.68) / 0.32 = 0.375.
    # "pos" vs rest: agree on 8 items, p_e = .4*.4 + .6*.6 = 0.52 -> (0.8 - 0.52) / 0.48 = 0.58333.
    items = [f"i{n}" for n in range(1, 11)]
    report = compute_agreement(
        items, [list(p) for p in zip(THREE_LABEL_A, THREE_LABEL_B, strict=True)], ["A", "B"]
    )
    assert report.kappa == pytest.approx(0.53125)
    per_label = {x.label: x.kappa for x in report.per_label}
    assert per_label["neu"] == pytest.approx(0.375) and per_label["pos"] == pytest.approx(0.58333, abs=1e-5)
    assert [d["item"] for d in report.disagreements] == ["i3", "i6", "i8"]
    assert report.disagreements[0] == {"item": "i3", "labels": {"A": "pos", "B": "neg"}}


def test_missing_ratings():
    rows = [list(p) for p in zip(THREE_LABEL_A, THREE_LABEL_B, strict=True)] + [["pos", None], [None, ""]]
    report = compute_agreement([str(i) for i in range(12)], rows, ["A", "B"])
    assert report.kappa == pytest.approx(0.53125)  # only items both rated
    assert (report.n_items, report.n_items_used, report.n_items_dropped) == (12, 10, 2)
    assert any("2 item(s) lacked a rating" in n for n in report.notes)
    # Three raters: Fleiss drops incomplete items, pairs still use every item both rated.
    rows3 = [["x", "x", "x"], ["x", "y", "y"], ["y", "y", "y"], ["x", None, "x"], ["y", "y", None]]
    report3 = compute_agreement(list("abcde"), rows3, ["A", "B", "C"])
    assert report3.n_items_used == 3 and report3.n_items_dropped == 2
    assert {(p.a, p.b): p.n_items for p in report3.pairwise} == {("A", "B"): 4, ("A", "C"): 4, ("B", "C"): 3}


def test_single_label_everywhere_is_none_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compute_agreement(["a", "b", "c"], [["ok", "ok", "ok"]] * 3, ["A", "B", "C"])
    assert report.kappa is None and report.percent_agreement == 1.0
    assert report.per_label[0].kappa is None and all(p.kappa is None for p in report.pairwise)
    assert any("kappa is undefined: every rating on the 3 item(s) used is 'ok'" in n for n in report.notes)
    json.dumps(report.as_dict(), allow_nan=False)
    assert "n/a" in report.to_text()


def test_bad_shapes():
    with pytest.raises(DatasetError, match=r"at least 2 annotators; found 1 \(A\)"):
        compute_agreement(["a"], [["x"]], ["A"])
    with pytest.raises(DatasetError, match="annotator names must be unique"):
        compute_agreement(["a"], [["x", "y"]], ["A", "A"])
    with pytest.raises(DatasetError, match="item b: 1 ratings for 2 annotators"):
        compute_agreement(["a", "b"], [["x", "y"], ["x"]], ["A", "B"])


def test_report_dict_and_text():
    items = [f"i{n}" for n in range(1, 11)]
    report = compute_agreement(
        items, [list(p) for p in zip(THREE_LABEL_A, THREE_LABEL_B, strict=True)], ["A", "B"]
    )
    d = json.loads(json.dumps(report.as_dict()))
    # "neg" vs rest: A neg on 4,5,6,10 and B on 3,4,5,10 -> agree on 8 of 10, p_e = 0.52 -> 0.58333.
    assert d["kappa"] == pytest.approx(0.53125)
    assert d["per_label"][0] == {"label": "neg", "count": 8, "kappa": pytest.approx(0.58333, abs=1e-5)}
    text = report.to_text()
    assert "Cohen's kappa: 0.531 (moderate)   percent agreement: 70.0%" in text
    assert "Disagreements: 3 item(s)" in text and "i3    pos  neg" in text


def test_agreement_from_csv(tmp_path):
    p = tmp_path / "labels.csv"
    rows = "\n".join(
        f"i{n},{a},{b}" for n, (a, b) in enumerate(zip(THREE_LABEL_A, THREE_LABEL_B, strict=True), 1)
    )
    p.write_text(f"ID,alice,bob\n{rows}\ni11,pos,\n", encoding="utf-8")
    report = agreement_from_csv(p)
    assert report.annotators == ["alice", "bob"] and report.kappa == pytest.approx(0.53125)
    assert report.n_items_dropped == 1 and report.disagreements[0]["item"] == "i3"
    assert agreement_from_csv(p, item_column="ID", annotator_columns=["bob", "alice"]).kappa == pytest.approx(
        0.53125
    )
    no_id = agreement_from_csv(p, item_column=None, annotator_columns=["alice", "bob"])
    assert no_id.disagreements[0]["item"] == "i3"  # the ID column is still found by name
    q = tmp_path / "plain.csv"
    q.write_text("alice,bob,carol\nx,x,y\ny,y,y\n", encoding="utf-8")
    plain = agreement_from_csv(q)
    assert plain.statistic == "fleiss_kappa" and plain.disagreements[0]["item"] == "line 2"
    with pytest.raises(DatasetError, match=r"no column\(s\) dave;.*columns found: ID, alice, bob"):
        agreement_from_csv(p, annotator_columns=["alice", "dave"])
    with pytest.raises(DatasetError, match=r"no column 'item'; columns found: ID, alice, bob"):
        agreement_from_csv(p, item_column="item")
    with pytest.raises(DatasetError, match=r"1 annotator column\(s\); agreement needs at least 2"):
        agreement_from_csv(p, annotator_columns=["alice"])


def test_agreement_from_label_studio(tmp_path):
    def ann(aid, tid, user, label, cancelled=False):
        return _annotation(
            aid,
            tid,
            user,
            [] if cancelled else [_result("choices", label, "sentiment", f"r{aid}")],
            cancelled,
        )

    tasks = []
    for n, (a, b) in enumerate(zip(THREE_LABEL_A, THREE_LABEL_B, strict=True), 1):
        tasks.append(_task(n, f"评论 {n}", [ann(2 * n, n, 1, a), ann(2 * n + 1, n, 2, b)]))
    tasks.append(_task(11, "评论 11", [ann(30, 11, 1, "pos"), ann(31, 11, 2, None, cancelled=True)]))
    tasks[0]["annotations"].append(ann(32, 1, 1, "neg"))  # the same person again: ignored, noted
    p = write_json(tmp_path / "ls.json", tasks)
    report = agreement_from_label_studio(p)
    assert report.annotators == ["1", "2"] and report.kappa == pytest.approx(0.53125)
    assert report.n_items == 11 and report.n_items_dropped == 1
    assert report.disagreements[0]["item"] == "3"
    assert any("1 cancelled annotation" in n for n in report.notes)
    assert any("1 repeated annotation" in n for n in report.notes)
    solo = write_json(tmp_path / "solo.json", [_task(1, "x", [ann(1, 1, 1, "pos")])])
    with pytest.raises(DatasetError, match=r"solo\.json: agreement needs at least 2 annotators"):
        agreement_from_label_studio(solo)
