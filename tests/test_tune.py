"""`tunesmith tune`: Optuna trials of real (tiny) training runs, pruning, results table, best config."""

import argparse
import json

import pytest
import yaml

from test_train import make_cfg
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.cli.tune import add_tune_parser
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, RunDirError
from tunesmith.training.tune import check_tune, run_tune

pytest.importorskip("optuna")  # the `tune` extra

SPACE = "tune.space={train.learning_rate: {low: 1e-4, high: 1e-2, log: true}, lora.r: [2, 4]}"
FAST = ["train.max_steps=4", "train.save_steps=2", "train.logging_steps=2", SPACE]


def test_search_records_every_trial_prunes_and_writes_the_best_config(tmp_path, tiny_qwen):
    import optuna

    class PruneTrialOne(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 1

    cfg = make_cfg(tmp_path, tiny_qwen, *FAST)
    result = run_tune(cfg, trials=3, pruner=PruneTrialOne())
    study = tmp_path / "run"
    rows = json.loads((study / "results.json").read_text(encoding="utf-8"))["trials"]
    assert [r["state"] for r in rows] == ["complete", "pruned", "complete"]
    assert rows[1]["steps"] == 2 and not (study / "trial-001" / "tunesmith.json").exists()  # stopped early
    complete = [r for r in rows if r["state"] == "complete"]
    best = min(complete, key=lambda r: r["eval_loss"])
    assert result.best["trial"] == best["trial"]
    for r in complete:
        card = json.loads((study / f"trial-{r['trial']:03d}" / "tunesmith.json").read_text(encoding="utf-8"))
        assert card["metrics"]["eval_loss"] == pytest.approx(r["eval_loss"])
        assert 1e-4 <= r["params"]["train.learning_rate"] <= 1e-2 and r["params"]["lora.r"] in (2, 4)

    best_cfg = load_config(study / "best.yaml")
    assert best_cfg.train.learning_rate == pytest.approx(best["params"]["train.learning_rate"])
    assert best_cfg.lora.r == best["params"]["lora.r"] and best_cfg.train.output_dir == f"{study}-best"
    table = (study / "results.md").read_text(encoding="utf-8")
    assert table.startswith("| trial | state | eval_loss | train.learning_rate | lora.r | steps |")
    assert "pruned" in table

    with pytest.raises(RunDirError, match="earlier search"):
        run_tune(cfg, trials=1)


def test_cli_prints_the_table_and_the_best_config(tmp_path, tiny_qwen, capsys):
    parser = argparse.ArgumentParser(prog="tunesmith")
    add_tune_parser(parser.add_subparsers(dest="command"))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(make_cfg(tmp_path, tiny_qwen, *FAST).to_dict()), encoding="utf-8")
    args = parser.parse_args(["tune", str(cfg_path), "tune.pruner=none", "--trials", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| 0 | complete |" in out and "best config:" in out and "best.yaml" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.space={lora.rank: [4, 8]}"], "unknown key `lora.rank`"),
        (["tune.space={r: [4]}"], "is not a `section.key`"),
        (
            ["tune.space={lora.dropout: {low: 0.0, high: 1.5}}"],
            r"lora.dropout` = 1.5: `lora.dropout` must be in",
        ),
        (["tune.space={lora.r: {low: 8, high: 4}}"], "needs numbers low < high"),
        (["tune.space={train.learning_rate: {low: 0, high: 1e-3, log: true}}"], "log range needs low > 0"),
        (["tune.space={lora.r: 8}"], "give a list of choices"),
        (["data.val_fraction=0"], "minimises the validation loss"),
    ],
)
def test_bad_search_spaces_fail_before_any_trial(overrides, message):
    cfg = load_config(None, ["model.source=m", "data.path=d.json", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_tune(cfg)
