"""Compute dtype by measurement (mocked both ways, cached), threads, progress and resume totals."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import tunesmith.runtime.hardware as hw
from conftest import EXAMPLE_DATA
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import UsageError
from tunesmith.training import run_train


@pytest.fixture
def rates(monkeypatch, tmp_path):
    """Mocked matmul rates: set ``rates.value`` per dtype; ``rates.calls`` counts measurements."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))

    class Rates:
        value = {"float32": 100.0, "bfloat16": 300.0}
        calls: list = []

    def measure(dtype, shape, seconds=0.15):
        Rates.calls.append((dtype, shape))
        return Rates.value[dtype]

    monkeypatch.setattr(hw, "measure_matmul", measure)
    Rates.calls = []
    return Rates


def test_bf16_is_chosen_where_it_measures_faster(rates):
    choice = hw.choose_dtype("auto", "cpu")
    assert choice.dtype == "bfloat16" and choice.gflops == {"float32": 100.0, "bfloat16": 300.0}
    assert "3.00x" in choice.reason


@pytest.mark.parametrize("bf16", [60.0, 110.0])  # slower; faster but under the 15 % margin
def test_fp32_is_chosen_where_bf16_is_slow_or_barely_faster(rates, bf16):
    rates.value = {"float32": 100.0, "bfloat16": bf16}
    assert hw.choose_dtype("auto", "cpu").dtype == "float32"


def test_an_explicit_dtype_is_not_measured(rates):
    assert hw.choose_dtype("float32", "cpu").dtype == "float32"
    assert hw.pick_dtype("bfloat16", "cpu") == "bfloat16"
    assert rates.calls == []


def test_the_measurement_is_cached_per_cpu_torch_threads_and_shape(rates, tmp_path):
    hw.choose_dtype("auto", "cpu")
    hw.choose_dtype("auto", "cpu")
    assert len(rates.calls) == 2  # fp32 and bf16 once
    cache = json.loads((tmp_path / "cache" / "dtype_speed.json").read_text())
    (key,) = cache
    assert hw.cpu_model() in key and torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    with_threads = torch.get_num_threads()
    torch.set_num_threads(with_threads + 1)
    try:
        hw.choose_dtype("auto", "cpu")  # another thread count: measured again
    finally:
        torch.set_num_threads(with_threads)
    assert len(rates.calls) == 4


def test_a_broken_cache_is_measured_again(rates, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dtype_speed.json").write_text("{not json")
    assert hw.choose_dtype("auto", "cpu").dtype == "bfloat16"
    assert json.loads((tmp_path / "cache" / "dtype_speed.json").read_text())


def test_the_model_shape_comes_from_its_config(tiny_qwen, rates):
    assert hw.model_shape(tiny_qwen) == (256, 64, 128)
    hw.choose_dtype("auto", "cpu", tiny_qwen)
    assert rates.calls[0][1] == (256, 64, 128)
    assert hw.model_shape(None) == hw.DEFAULT_SHAPE


def test_a_real_measurement_gives_positive_rates():
    assert hw.measure_matmul("float32", (16, 32, 64), seconds=0.01) > 0


def test_usable_cores_follow_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(hw.os, "sched_getaffinity", lambda pid: {0})
    assert hw.usable_cores() == 1
    monkeypatch.setattr(hw.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(hw, "_cgroup_cpus", lambda: 2.5)
    assert hw.usable_cores() == 2


def test_default_threads_leave_out_busy_cores(monkeypatch):
    monkeypatch.setattr(hw, "usable_cores", lambda: 4)
    monkeypatch.setattr(hw, "busy_cores", lambda: 1)
    assert hw.free_threads() == 3
    monkeypatch.setattr(hw, "busy_cores", lambda: 9)
    assert hw.free_threads() == 1


def test_busy_cores_reads_the_runnable_count(monkeypatch, tmp_path):
    fake = tmp_path / "loadavg"
    fake.write_text("0.50 0.40 0.30 3/200 12345\n")
    real = hw.Path
    monkeypatch.setattr(hw, "Path", lambda p: fake if p == "/proc/loadavg" else real(p))
    assert hw.busy_cores() == 2  # three running, one of them this process


def test_use_threads_sets_torch_and_rejects_nonsense(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert hw.use_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hw.use_threads(None) == 1
    with pytest.raises(UsageError):
        hw.use_threads(0)


def cfg(model, out, *extra):
    return load_config(None, [
        f"model.source={model}", f"data.path={EXAMPLE_DATA}", "data.limit=24", "data.val_fraction=0.25",
        f"train.output_dir={out}", "train.batch_size=4", "train.grad_accum=1", "train.logging_steps=2",
        "train.threads=1", *extra,
    ])  # fmt: skip


def test_training_says_which_dtype_and_why_and_the_card_keeps_it(tmp_path, tiny_qwen, rates, caplog):
    rates.value = {"float32": 100.0, "bfloat16": 50.0}  # a CPU where bf16 is slow
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        run = run_train(cfg(tiny_qwen, tmp_path / "run", "train.max_steps=2"))
    card = json.loads((run / "tunesmith.json").read_text())
    assert card["dtype"] == "float32"
    assert card["compute"]["gflops"] == {"float32": 100.0, "bfloat16": 50.0}
    assert card["compute"]["threads"] == 1
    assert "compute dtype float32 (measured: bf16 products at 50 GFLOP/s, fp32 at 100" in caplog.text
    assert "measuring the validation loss before training, on 6 examples" in caplog.text


def test_progress_lines_and_the_slow_warning(tmp_path, tiny_qwen, caplog):
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        run_train(cfg(tiny_qwen, tmp_path / "run", "train.max_steps=6", "train.expected_seconds=0.001",
                      "train.dtype=float32"))  # fmt: skip
    assert "step 6/6 (100%)" in caplog.text and "tokens/s" in caplog.text and "ETA" in caplog.text
    warning = [r.getMessage() for r in caplog.records if "on pace for" in r.getMessage()]
    assert len(warning) == 1 and "Likely causes:" in warning[0] and "float32" in warning[0]


def test_the_card_totals_cover_every_resume(tmp_path, tiny_qwen):
    from transformers import TrainerCallback

    class StopAt4(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # once checkpoint-4 is written
            if state.global_step == 4:
                raise KeyboardInterrupt

    common = ["train.max_steps=8", "train.save_steps=4", "train.dtype=float32"]
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg(tiny_qwen, tmp_path / "run", *common), callbacks=[StopAt4()])
    run = run_train(cfg(tiny_qwen, tmp_path / "run", *common, "train.resume=true"))
    metrics = json.loads((run / "tunesmith.json").read_text())["metrics"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["resumes"] == 1 and metrics["steps"] == 8
    assert {r["segment"] for r in records if "segment" in r} == {0, 1}
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "eval_loss" not in r]
    assert [s for s, _ in losses] == [1, 2, 4, 6, 8]
    want, prev = 0.0, 0
    for step, loss in losses:
        want += loss * (step - prev)
        prev = step
    assert metrics["train_loss"] == pytest.approx(want / 8)
    spans = {}
    for r in records:
        if "segment" in r:
            spans[r["segment"]] = max(spans.get(r["segment"], 0), r["segment_s"])
    assert metrics["train_runtime_s"] == pytest.approx(sum(spans.values()), abs=1e-3)


def test_doctor_prints_cores_threads_and_the_measured_choice(rates, capsys, tiny_qwen):
    from tunesmith.cli.main import main

    assert main(["doctor", "--model", str(tiny_qwen)]) == 0
    out = capsys.readouterr().out
    assert "float32 100 GFLOP/s, bfloat16 300 GFLOP/s" in out and "256x64x128" in out
    assert "train.dtype auto -> bfloat16" in out and "thread(s) by default" in out
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["cpu_dtype"] == "bfloat16" and rep["cores"]["default_threads"] >= 1
