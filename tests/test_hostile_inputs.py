"""Hostile-but-fair input: tunesmith never loses the user's files, never hangs on a config, and ends
every bad input in one `error:` line instead of a traceback. Tiny models; each test takes seconds."""

import json
import shutil

import pytest

from conftest import EXAMPLE_DATA
from threads import one_torch_thread  # noqa: F401  (tiny models train faster on one thread)
from tunesmith.cli.main import main
from tunesmith.config import load_config
from tunesmith.errors import ModelSourceError, RunDirError
from tunesmith.runcard import read_run_card
from tunesmith.training import run_train


def cfg_for(model_dir, out, *extra):
    return load_config(None, [
        f"model.source={model_dir}", f"data.path={EXAMPLE_DATA}", "data.limit=12",
        "data.val_fraction=0", f"train.output_dir={out}", "train.max_steps=2", "train.batch_size=4",
        "train.grad_accum=1", "train.dtype=float32", "train.logging_steps=1", *extra,
    ])  # fmt: skip


def snapshot(folder):
    """Every file under ``folder`` with its bytes: what must survive untouched."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def train_steps(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def stop_at(step):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise KeyboardInterrupt

    return Stop()


@pytest.fixture
def finished_run(tmp_path, tiny_run):
    """A copy of a finished run, to be overwritten."""
    run = tmp_path / "old_run"
    shutil.copytree(tiny_run, run)
    return run


# 1. overwrite is safe by construction


def test_overwrite_with_a_typo_in_the_model_keeps_the_old_run(finished_run):
    before = snapshot(finished_run)
    cfg = cfg_for("no/such-model-typo", finished_run, "train.overwrite=true")
    with pytest.raises(ModelSourceError):
        run_train(cfg)
    assert snapshot(finished_run) == before


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, tiny_qwen):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("my notes", encoding="utf-8")
    (project / "config.yaml").write_text("a: 1\n", encoding="utf-8")
    before = snapshot(project)
    for extra in ([], ["train.overwrite=true"]):
        with pytest.raises(RunDirError, match="not a tunesmith run.*notes.md"):
            run_train(cfg_for(tiny_qwen, project, *extra))
    assert snapshot(project) == before


def test_overwrite_refuses_the_working_directory_and_the_config_folder(
    finished_run, tiny_qwen, monkeypatch, capsys
):
    before = snapshot(finished_run)
    monkeypatch.chdir(finished_run)
    with pytest.raises(RunDirError, match="working directory"):
        run_train(cfg_for(tiny_qwen, ".", "train.overwrite=true"))
    monkeypatch.chdir(finished_run.parent)
    # the run's own config.yaml as the config file: the folder holding it is never replaced
    config = finished_run / "config.yaml"
    args = ["train", str(config), f"model.source={tiny_qwen}", f"data.path={EXAMPLE_DATA}"]
    rc = main([*args, f"train.output_dir={finished_run}", "train.overwrite=true", "train.max_steps=1"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert snapshot(finished_run) == before


def test_overwrite_moves_the_old_run_aside_until_the_new_one_has_started(finished_run, tiny_qwen):
    from transformers import TrainerCallback

    old_card = (finished_run / "tunesmith.json").read_bytes()
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen["aside"] = [p.name for p in finished_run.parent.iterdir() if "replaced" in p.name]
            seen["card_kept"] = any(
                (p / "tunesmith.json").read_bytes() == old_card
                for p in finished_run.parent.iterdir()
                if "replaced" in p.name
            )

    run_train(cfg_for(tiny_qwen, finished_run, "train.overwrite=true"), callbacks=[Look()])
    assert seen["aside"] and seen["card_kept"]  # kept aside while the new run loaded
    assert [p.name for p in finished_run.parent.iterdir()] == [finished_run.name]  # then deleted
    assert (finished_run / "tunesmith.json").read_bytes() != old_card


def test_overwrite_interrupted_before_the_first_step_restores_the_old_run(finished_run, tiny_qwen):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            raise KeyboardInterrupt

    before = snapshot(finished_run)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg_for(tiny_qwen, finished_run, "train.overwrite=true"), callbacks=[Boom()])
    assert snapshot(finished_run) == before
    assert [p.name for p in finished_run.parent.iterdir()] == [finished_run.name]


def test_a_failed_start_leaves_no_half_run_dir(tmp_path, tiny_qwen):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            raise RuntimeError("fails before the first step")

    with pytest.raises(RuntimeError):
        run_train(cfg_for(tiny_qwen, tmp_path / "new"), callbacks=[Boom()])
    assert not (tmp_path / "new").exists()


# 3. one-step and tiny runs


@pytest.mark.parametrize(
    "extra", [["train.max_steps=1"], ["data.limit=4", "train.max_steps=null", "train.epochs=1"]]
)
def test_a_run_of_one_optimizer_step_finishes(tmp_path, tiny_qwen, extra):
    run = run_train(cfg_for(tiny_qwen, tmp_path / "run", "train.warmup_ratio=0.5", *extra))
    assert read_run_card(run).metrics["steps"] == 1


# 5. resume checks the config against the recorded one


def test_resume_with_a_changed_config_is_refused_before_the_model_loads(tmp_path, tiny_qwen, monkeypatch):
    out = tmp_path / "run"
    common = ["train.max_steps=4", "train.save_steps=2"]
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg_for(tiny_qwen, out, *common), callbacks=[stop_at(3)])
    recorded = (out / "config.yaml").read_bytes()

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("tunesmith.training.lm.load_for_training", no_load)
    changed = ["train.resume=true", "lora.r=16", "train.learning_rate=5e-5"]
    with pytest.raises(RunDirError) as err:
        run_train(cfg_for(tiny_qwen, out, *common, *changed))
    msg = str(err.value)
    assert "lora.r: 8 → 16" in msg and "train.learning_rate: 0.0001 → 5e-05" in msg
    assert "may change on resume" in msg and "train.max_steps" in msg
    assert (out / "config.yaml").read_bytes() == recorded  # a refused resume rewrites nothing
    monkeypatch.undo()

    # a key that may change on resume: the run goes on to the new step count
    done = run_train(cfg_for(tiny_qwen, out, "train.max_steps=5", "train.save_steps=2", "train.resume=true"))
    assert read_run_card(done).metrics["steps"] == 5
    assert train_steps(done) == [1, 2, 3, 4, 5]
    assert "max_steps: 5" in (done / "config.yaml").read_text(encoding="utf-8")


# 6. a fresh start over an unfinished run without checkpoints


def test_a_fresh_start_over_an_unfinished_run_starts_a_clean_metrics_stream(tmp_path, tiny_qwen):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg_for(tiny_qwen, out, "train.max_steps=4"), callbacks=[stop_at(3)])
    assert train_steps(out) == [1, 2]
    (out / "checkpoints").mkdir(exist_ok=True)  # killed before the first save: an empty folder
    with pytest.raises(RunDirError) as err:
        read_run_card(out)
    assert "did not finish" in str(err.value) and "checkpoints" not in str(err.value)

    run_train(cfg_for(tiny_qwen, out, "train.max_steps=3"))
    assert train_steps(out) == [1, 2, 3]


# 4. IO failures end in one `error:` line naming the path and the cause


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def write_config(tmp_path, model_dir):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model:\n  source: {model_dir}\ndata:\n  path: {EXAMPLE_DATA}\n  limit: 8\n  val_fraction: 0\n"
        "train:\n  max_steps: 2\n  save_steps: 1\n  dtype: float32\n  batch_size: 4\n  grad_accum: 1\n",
        encoding="utf-8",
    )
    return str(path)


def test_train_into_a_file_or_under_a_file_or_read_only_is_one_error_line(
    tmp_path, tiny_qwen, capsys, monkeypatch
):
    import errno
    import pathlib

    config = write_config(tmp_path, tiny_qwen)
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    assert main(["train", config, f"train.output_dir={a_file}"]) == 2
    [line] = error_lines(capsys)
    assert str(a_file) in line and "is a file" in line
    assert main(["train", config, f"train.output_dir={a_file / 'run'}"]) == 2
    [line] = error_lines(capsys)
    assert str(a_file / "run") in line and "not a directory" in line
    assert a_file.read_text(encoding="utf-8") == "x"

    def read_only(self, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert main(["train", config, f"train.output_dir={tmp_path / 'ro' / 'run'}"]) == 2
    [line] = error_lines(capsys)
    assert "ro/run" in line and "read-only file system" in line


def test_disk_full_while_saving_a_checkpoint_says_so(tmp_path, tiny_qwen, capsys, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    import torch

    def full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1984 vs 1876")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**9, 10**9, 4096))
    out = tmp_path / "run"
    assert main(["train", write_config(tmp_path, tiny_qwen), f"train.output_dir={out}"]) == 2
    [line] = error_lines(capsys)
    assert str(out) in line and "no space left on device" in line


def test_data_subcommands_report_unwritable_outputs_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    data = str(EXAMPLE_DATA)
    for argv in (
        ["data", "clean", data, "-o", str(a_file / "clean.json")],
        ["data", "split", data, "-o", str(a_file)],
        ["data", "split", data, "-o", str(a_file / "splits")],
        ["data", "inspect", data, "--html", str(a_file / "report.html")],
        ["data", "inspect", data, "--html", str(tmp_path)],
    ):
        assert main(argv) == 2, argv
        [line] = error_lines(capsys)
        assert str(a_file) in line or str(tmp_path) in line, line
        assert "not a directory" in line or "is a file" in line or "is a directory" in line, line
    assert a_file.read_text(encoding="utf-8") == "x"


# 9. a run dir missing its adapter or tokenizer


@pytest.mark.parametrize("part", ["adapter", "tokenizer"])
def test_chat_and_serve_on_a_run_missing_a_part_say_which(finished_run, part, capsys):
    from tunesmith.runtime.adapters import load_adapter_set

    shutil.rmtree(finished_run / part)
    assert main(["chat", str(finished_run), "--prompt", "hi"]) == 2
    [line] = error_lines(capsys)
    assert f"{part}/ is missing" in line
    with pytest.raises(RunDirError, match=f"{part}/ is missing"):
        load_adapter_set({"a": finished_run}, device="cpu")


# 2. a YAML alias bomb ("billion laughs") is refused at once


def alias_bomb(levels=9):
    """A YAML list whose expansion holds 9**levels strings, in a few hundred bytes."""
    rows = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(rows) + "]"


@pytest.mark.parametrize(
    "where",
    ["lora:\n  r: {bomb}\n", "lora: {bomb}\n", "train:\n  trainer_args: {{zz: {bomb}}}\n"],
    ids=["key", "section", "trainer_args"],
)
def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, where):
    import subprocess
    import sys

    config = tmp_path / "bomb.yaml"
    body = f"model:\n  source: {tmp_path}\ndata:\n  path: {EXAMPLE_DATA}\n" + where.format(bomb=alias_bomb())
    config.write_text(body, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "train", str(config), "train.output_dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "alias" in proc.stderr and len(proc.stderr) < 2000
    assert not (tmp_path / "run").exists()


# 8. config input that used to crash: each is one clear error


def test_bad_config_inputs_are_one_clear_error(tmp_path, capsys):
    good = ["model.source=m", f"data.path={EXAMPLE_DATA}"]
    top_list = tmp_path / "list.yaml"
    top_list.write_text("- model\n- data\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model:\n  source: café\n".encode("latin-1"))
    many = tmp_path / "many.yaml"
    many.write_text("lora:\n" + "".join(f"  k{i}: 1\n" for i in range(4_000)), encoding="utf-8")
    long_value = tmp_path / "long.yaml"
    long_value.write_text("lora:\n  r: " + "x" * 200_000 + "\n", encoding="utf-8")
    cases = [
        (["train", str(long_value), *good], "expected an integer"),
        (["train", str(top_list), *good], "top level must be a mapping"),
        (["train", str(latin1), *good], "not UTF-8"),
        (["train", str(many), *good], "and 3980 more"),
        (["train", str(long_value), "lora.r=["], "override 'lora.r=['"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error:"), err[:300]
        assert expected in err and len(err) < 3000, err[:300]


def test_an_interrupt_before_any_checkpoint_does_not_suggest_resuming(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, **kw):
        (tmp_path / "run").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr("tunesmith.training.run_train", interrupted)
    assert main(["train", write_config(tmp_path, tmp_path), f"train.output_dir={tmp_path / 'run'}"]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "train.resume=true" not in err


# 7. data that used to crash: lone surrogates, huge integers, deep nesting


def test_a_lone_surrogate_is_reported_repaired_by_clean_and_refused_by_train(tmp_path, capsys):
    from tunesmith.data.clean import clean_file
    from tunesmith.data.inspect import inspect_file

    data = tmp_path / "cut_emoji.json"
    rows = [{"instruction": "hi", "output": "fine"}, {"instruction": "hi", "output": "a\ud83d"}]
    data.write_text(json.dumps(rows, ensure_ascii=True), encoding="utf-8")  # "\ud83d" escaped in JSON

    text = inspect_file(data)["text"]
    assert text["lone_surrogate_records"] == 1 and text["lone_surrogate_examples"] == [[1, "output"]]
    assert main(["data", "inspect", str(data), "--json"]) == 0  # prints valid UTF-8

    rep = clean_file(data, tmp_path / "clean.json")
    assert rep["modified"]["lone_surrogates_replaced"] == 1
    cleaned = json.loads((tmp_path / "clean.json").read_text(encoding="utf-8"))
    assert "a\ufffd" in [r["output"] for r in cleaned]

    capsys.readouterr()
    assert main(["train", write_config(tmp_path, tmp_path), f"data.path={data}"]) == 2
    [line] = error_lines(capsys)
    assert "record 1" in line and "'output'" in line and "surrogate" in line


def test_huge_integers_and_deep_nesting_never_end_in_a_traceback(tmp_path, capsys):
    from tunesmith.data import load_records

    big = tmp_path / "big.jsonl"
    line = '{"instruction": "hi", "output": "ok", "n": ' + "7" * 5000 + "}"
    big.write_text('{"instruction": "hi", "output": "ok"}\n' + line + "\n", encoding="utf-8")
    train = ["train", write_config(tmp_path, tmp_path), f"data.path={big}"]
    for argv in (["data", "inspect", str(big)], train):
        assert main(argv) == 2
        [line] = error_lines(capsys)
        assert "line 2" in line and "5,000 digits" in line

    deep = tmp_path / "deep.json"
    nested = "[" * 900 + "]" * 900
    deep.write_text(f'[{{"instruction": "hi", "output": "ok", "extra": {nested}}}]', encoding="utf-8")
    assert main(["data", "inspect", str(deep)]) == 0
    assert main(["data", "clean", str(deep), "-o", str(tmp_path / "deep_clean.json")]) == 0
    assert load_records(deep)[0][-1]["content"] == "ok"


# 11. messages that pointed the wrong way


def test_data_messages_point_the_right_way(tmp_path, capsys):
    from tunesmith.data import load_records
    from tunesmith.errors import DatasetError

    gbk = tmp_path / "gbk.json"
    gbk.write_bytes('[{"instruction": "你是谁？", "output": "臣妾是甄嬛。"}]'.encode("gbk"))  # 55 bytes
    with pytest.raises(DatasetError, match="looks like GB18030/GBK.*iconv -f GB18030"):
        load_records(gbk)

    cut = tmp_path / "cut.json"
    cut.write_bytes('[{"instruction": "你是谁", "output": "臣妾'.encode()[:-1])
    with pytest.raises(DatasetError, match="ends in the middle of a character.*cut off"):
        load_records(cut)

    null = tmp_path / "null.json"
    null.write_text('[{"instruction": "q", "input": "", "output": null}]', encoding="utf-8")
    with pytest.raises(DatasetError, match="field 'output' is null"):
        load_records(null)

    data = tmp_path / "data.json"
    data.write_text(EXAMPLE_DATA.read_text(encoding="utf-8"), encoding="utf-8")
    before = data.read_bytes()
    for argv in (
        ["data", "clean", str(data), "-o", str(data)],
        ["data", "clean", str(data), "-o", str(tmp_path / "c.json"), "--report", str(data)],
        ["data", "split", str(tmp_path / "train.json"), "-o", str(tmp_path)],
        ["data", "convert", str(data), "-o", str(data)],
    ):
        if "split" in argv:
            (tmp_path / "train.json").write_bytes(before)
        assert main(argv) == 2, argv
        [line] = error_lines(capsys)
        assert "is the input file" in line
    assert data.read_bytes() == before and (tmp_path / "train.json").read_bytes() == before


# 10. server: 400 for undecodable text, 413 for any over-size body, 401 before the body is read


def test_server_answers_hostile_requests_with_the_right_status(tiny_run):
    httpx = pytest.importorskip("httpx")
    from tunesmith.serving.app import create_app
    from tunesmith.serving.server import ServerThread, build_backend

    key = "k-123"
    app = create_app(build_backend({"tiny": tiny_run}, device="cpu"), api_key=key, max_body_bytes=1 << 20)
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    with ServerThread(app) as srv:
        url = srv.url + "/v1/chat/completions"
        surrogate = '{"model": "tiny", "max_tokens": 2, '
        surrogate += '"messages": [{"role": "user", "content": "a\\ud800"}]}'
        r = httpx.post(url, content=surrogate, headers=auth, timeout=60)
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]

        chunked = httpx.post(url, content=iter([b"x" * (1 << 19)] * 6), headers=auth, timeout=60)
        assert chunked.status_code == 413
        assert chunked.json()["error"]["code"] == "request_too_large"

        no_key = httpx.post(url, content="{not json", headers={"content-type": "application/json"})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"

        fine = httpx.post(url, content=surrogate.replace("\\ud800", "!"), headers=auth, timeout=60)
        assert fine.status_code == 200  # and the server keeps serving


def test_the_web_ui_takes_a_user_name_and_password(tiny_run, tmp_path, capsys):
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    from tunesmith.serving.server import ServerThread, build_backend
    from tunesmith.webui import create_webui_app, parse_auth

    assert main(["webui", str(tiny_run), "--auth", "no-colon"]) == 2
    [line] = error_lines(capsys)
    assert "USER:PASS" in line
    secret = tmp_path / "auth.txt"
    secret.write_text("ann:s3cret:with-colon\n", encoding="utf-8")
    assert parse_auth(None, str(secret)) == ("ann", "s3cret:with-colon")

    app = create_webui_app(build_backend({"tiny": tiny_run}, device="cpu"), auth=("ann", "s3cret"))
    with ServerThread(app) as srv:
        anonymous = httpx.get(srv.url + "/")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(srv.url + "/", auth=("ann", "wrong")).status_code == 401
        assert httpx.get(srv.url + "/config", auth=("bob", "s3cret")).status_code == 401
        assert httpx.get(srv.url + "/", auth=("ann", "s3cret")).status_code == 200


def test_a_search_never_replaces_a_directory_that_is_not_a_search(tmp_path, tiny_qwen):
    pytest.importorskip("optuna")
    from tunesmith.training.tune import run_tune

    study = tmp_path / "project"
    study.mkdir()
    (study / "results.json").write_text("{}", encoding="utf-8")
    (study / "notes.md").write_text("mine", encoding="utf-8")
    before = snapshot(study)
    with pytest.raises(RunDirError, match="not a tunesmith search.*notes.md"):
        run_tune(cfg_for(tiny_qwen, study, "train.overwrite=true", "data.val_fraction=0.2"), trials=1)
    assert snapshot(study) == before


def test_a_cleaning_recipe_with_an_alias_bomb_is_refused(tmp_path):
    from tunesmith.data.clean import load_recipe
    from tunesmith.errors import ConfigError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"min_answer_chars: {alias_bomb(levels=5)}\n", encoding="utf-8")  # 59,049 values
    with pytest.raises(ConfigError, match="alias") as err:
        load_recipe(recipe)
    assert len(str(err.value)) < 1000
