"""Evaluation: report artifacts, perplexity masking, lenient data, sweep grid, clear errors."""

import argparse
import json
import math
import shutil

import pytest

from conftest import EXAMPLE_DATA, write_json
from threads import one_thread
from tunesmith.cli.eval import add_eval_parser
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DatasetError, RunDirError, TunesmithError
from tunesmith.evaluation import (
    EvalItem,
    EvalOptions,
    answer_perplexity,
    load_eval_items,
    parse_sweep,
    run_eval,
)
from tunesmith.runcard import read_run_card, write_run_card
from tunesmith.runtime.chatbot import load_chatbot

RECORDS = json.loads(EXAMPLE_DATA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bot(tiny_run):
    return load_chatbot(tiny_run, device="cpu")


def quick(**kw) -> EvalOptions:
    return EvalOptions(**{"limit": 6, "samples": 2, "batch_size": 4, "progress": False, **kw})


def test_report_base_vs_fine_tuned(tiny_run, tmp_path):
    data = write_json(tmp_path / "eval.json", RECORDS[40:46])
    general = write_json(tmp_path / "general.json", [{"instruction": "1+1=?", "output": "2"}])
    sweep = [{"temperature": 0.0, "repetition_penalty": 1.3}, {"temperature": 0.7}]
    res = run_eval(tiny_run, data, quick(out_dir=tmp_path / "out", general=general, sweep=sweep))
    out = tmp_path / "out"
    for name in ("metrics.json", "report.md", "report.html", "loss.png", "generations.jsonl"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m == json.loads(json.dumps(res.metrics))
    base, ft = m["models"]["base"], m["models"]["fine_tuned"]
    for side in (base, ft):
        assert {"perplexity", "bleu4", "rougeL", "rougeL_char", "distinct2", "loop_rate"} <= set(side)
        assert {"mean_tokens", "stop_rate", "general_perplexity"} <= set(side)
        assert side["mean_tokens"] <= 12  # the run card's max_new_tokens
    assert base["perplexity"] != pytest.approx(ft["perplexity"])  # the adapter really was switched off
    assert m["sampling"]["temperature"] == 0  # the run card's greedy default
    assert m["data"] == {"path": str(data), "records": 6, "with_reference": 6, "limit": 6}
    assert [s["setting"] for s in m["sweep"]] == sweep
    assert m["skipped"] == {}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| perplexity (answer tokens) ↓ |" in md and "![train and validation loss](loss.png)" in md
    assert RECORDS[40]["output"] in md and "## Decoding sweep" in md
    assert "<table>" in (out / "report.html").read_text(encoding="utf-8")
    assert len((out / "generations.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    assert res.headline()["perplexity"] == {"base": base["perplexity"], "fine_tuned": ft["perplexity"]}


def test_perplexity_is_token_weighted_over_answer_tokens_only(bot):
    import torch

    convs = [bot.with_system(EvalItem.from_conversation(c).conversation) for c in _convs(RECORDS[:5])]
    got = answer_perplexity(bot, convs, max_length=384, batch_size=3)
    nll, n = 0.0, 0
    for conv in convs:  # one at a time, unpadded, through the model's own loss
        ex = bot.fmt.encode(conv, 384)
        with torch.inference_mode():
            loss = bot.model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss
        k = sum(t != -100 for t in ex.labels[1:])
        nll, n = nll + float(loss) * k, n + k
    assert got["answer_tokens"] == n and got["records"] == 5
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    # answers include the end-of-turn token but no prompt tokens
    assert n == sum(len(bot.fmt.tokenizer(c[-1]["content"] + bot.fmt.eot_token)["input_ids"]) for c in convs)


def test_base_perplexity_is_the_plain_base_model(tiny_run, bot):
    convs = _convs(RECORDS[:4])
    plain = load_chatbot(tiny_run, device="cpu", base_only=True)
    assert answer_perplexity(bot, convs, base=True)["perplexity"] == pytest.approx(
        answer_perplexity(plain, convs)["perplexity"], rel=1e-5
    )


def test_data_without_references_gets_reference_free_metrics(tiny_run, tmp_path):
    data = write_json(
        tmp_path / "prompts.json",
        [
            {"instruction": "你是谁？", "output": ""},
            {"messages": [{"role": "user", "content": "皇上驾到！"}]},
            {"conversations": [{"from": "human", "value": "你好"}]},
        ],
    )
    m = run_eval(tiny_run, data, quick(out_dir=tmp_path / "out")).metrics
    assert m["data"]["with_reference"] == 0
    assert {"perplexity", "bleu4", "rougeL"} <= set(m["skipped"])
    for side in m["models"].values():
        assert "perplexity" not in side and "bleu4" not in side
        assert {"distinct1", "distinct2", "loop_rate", "mean_chars", "stop_rate"} <= set(side)
    assert "skipped bleu4: the data has no reference answers" in (tmp_path / "out" / "report.md").read_text(
        encoding="utf-8"
    )


def test_lenient_loading_and_bad_records(tmp_path):
    items = load_eval_items(
        write_json(
            tmp_path / "d.json",
            [
                {"instruction": "a", "output": "b", "history": [["q", "r"]]},
                {"instruction": "c", "input": "d"},
                {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
            ],
        )
    )
    assert [it.reference for it in items] == ["b", None, None]
    assert [m["role"] for m in items[0].prompt] == ["user", "assistant", "user"]
    assert items[1].prompt == [{"role": "user", "content": "c\nd"}]
    bad = write_json(tmp_path / "bad.json", [{"instruction": "a", "output": "b"}, {"messages": []}])
    with pytest.raises(DatasetError, match=r"bad\.json, record 1"):
        load_eval_items(bad)
    two_users = [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    with pytest.raises(DatasetError, match="roles must alternate"):
        load_eval_items(write_json(tmp_path / "u.json", two_users))
    with pytest.raises(DatasetError, match="no records"):
        load_eval_items(write_json(tmp_path / "empty.json", []))


def test_clear_errors_before_any_model_loads(tiny_run, tmp_path):
    data = write_json(tmp_path / "d.json", RECORDS[:2])
    with pytest.raises(RunDirError, match="no such run directory"):
        run_eval(tmp_path / "nope", data)
    with pytest.raises(DatasetError, match="no records to evaluate"):
        run_eval(tiny_run, write_json(tmp_path / "e.json", []))
    with pytest.raises(DatasetError, match="file not found"):
        run_eval(tiny_run, tmp_path / "missing.json")
    no_answers = write_json(tmp_path / "g.json", [{"instruction": "q", "output": ""}])
    with pytest.raises(DatasetError, match="general data needs answers"):
        run_eval(tiny_run, data, EvalOptions(general=no_answers))


def _copy_run(tiny_run, tmp_path, **base_model):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval", "tensorboard"))
    card = read_run_card(run)
    card.base_model.update(base_model)
    write_run_card(run, card)
    return run


def test_different_or_missing_base_model_is_refused(tiny_run, tmp_path):
    data = write_json(tmp_path / "d.json", RECORDS[:2])
    other = _copy_run(tiny_run, tmp_path, content_hash="0" * 64)
    with pytest.raises(RunDirError, match="--allow-different-base"):
        run_eval(other, data, quick())
    m = run_eval(other, data, quick(allow_different_base=True, sweep=None)).metrics
    assert m["data"]["records"] == 2
    with pytest.raises(RunDirError, match="trained on another base model"):
        run_eval(tiny_run, data, quick(base_run=other))
    missing = _copy_run(tiny_run, tmp_path / "gone", source=str(tmp_path / "deleted-model"))
    with pytest.raises(RunDirError, match="base model cannot be resolved"):
        run_eval(missing, data, quick())


def test_base_run_compares_two_runs(tiny_run, tmp_path):
    data = write_json(tmp_path / "d.json", RECORDS[:3])
    m = run_eval(tiny_run, data, quick(base_run=tiny_run, out_dir=tmp_path / "o")).metrics
    # the same run on both sides: identical numbers
    assert m["models"]["base"]["perplexity"] == pytest.approx(m["models"]["fine_tuned"]["perplexity"])
    assert m["base"]["run"] == str(tiny_run)


def test_parse_sweep_grid_and_errors():
    assert parse_sweep(["temperature=0,0.5", "repetition_penalty=1.0,1.3"]) == [
        {"temperature": 0.0, "repetition_penalty": 1.0},
        {"temperature": 0.0, "repetition_penalty": 1.3},
        {"temperature": 0.5, "repetition_penalty": 1.0},
        {"temperature": 0.5, "repetition_penalty": 1.3},
    ]
    assert len(parse_sweep([])) == 6  # the default grid
    assert parse_sweep(["max-new-tokens=8"]) == [{"max_new_tokens": 8}]
    with pytest.raises(ConfigError) as e:
        parse_sweep(["temprature=0", "top_k=x", "top_p=2", "seed"])
    msg = str(e.value)
    assert "did you mean temperature" in msg and "'x' is not an integer" in msg
    assert "top_p: 2 must be in (0, 1]" in msg and "must look like key=v1,v2" in msg


def test_cli_parses_and_fails_cleanly(tiny_run, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_eval_parser(parser.add_subparsers(dest="command"))
    data = write_json(tmp_path / "d.json", RECORDS[:2])
    args = parser.parse_args(
        ["eval", str(tiny_run), "--data", str(data), "--limit", "2", "--out", str(tmp_path / "o")]
        + ["--sweep", "temperature=0,0.9", "--max-new-tokens", "4", "--no-progress", "--samples", "1"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "perplexity (answer tokens)" in printed and "report.html" in printed
    m = json.loads((tmp_path / "o" / "metrics.json").read_text(encoding="utf-8"))
    assert m["sampling"]["max_new_tokens"] == 4 and len(m["sweep"]) == 2
    bad = parser.parse_args(["eval", str(tmp_path / "nope"), "--data", str(data)])
    with pytest.raises(TunesmithError):  # cli.main prints "error: ..." and returns 2 for these
        bad.func(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", str(tiny_run), "--data", str(data), "--limit", "0"])


def test_train_can_evaluate_at_the_end(tiny_qwen, tmp_path):
    cfg = load_config(None, [
        f"model.source={tiny_qwen}", f"data.path={EXAMPLE_DATA}", "data.limit=24", "data.val_fraction=0.25",
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=4",
        "train.grad_accum=1", "train.dtype=float32", "generation.temperature=0",
        "generation.max_new_tokens=6", "eval.at_end=true", "eval.limit=4", "eval.samples=1",
    ])  # fmt: skip
    from tunesmith.training import run_train

    run = run_train(cfg)
    card = read_run_card(run)
    ev = card.metrics["eval"]
    assert ev["records"] == 4 and set(ev["perplexity"]) == {"base", "fine_tuned"}
    assert (run / "eval" / "report.html").is_file()
    assert "validation split" in json.loads((run / "eval" / "metrics.json").read_text())["data"]["path"]


def test_eval_config_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match="eval.at_end` needs held-out data"):
        load_config(None, ["model.source=m", "data.path=d.json", "eval.at_end=true", "data.val_fraction=0"])
    with pytest.raises(ConfigError, match="eval.limit"):
        load_config(None, ["model.source=m", "data.path=d.json", "eval.limit=0"])


def _convs(records):
    return [
        [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
        for r in records
    ]
