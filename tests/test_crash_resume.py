"""Crash safety: a training process killed with SIGKILL resumes from its last complete checkpoint and
ends with the adapter an uninterrupted run writes (same data order, same optimizer state)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import EXAMPLE_DATA
from test_train import read_metrics
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.training import run_train
from tunesmith.training.checkpoints import last_complete_checkpoint, trim_metrics

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def common(model_dir, out):
    return [
        f"model.source={model_dir}",
        f"data.path={EXAMPLE_DATA}",
        "data.limit=48",
        "data.val_fraction=0.125",
        "lora.dropout=0",  # deterministic: no dropout masks to replay
        f"train.output_dir={out}",
        "train.max_steps=40",
        "train.save_steps=10",
        "train.logging_steps=5",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.learning_rate=3e-3",
        "train.dtype=float32",
    ]


def kill_after_first_checkpoint(cmd, run_dir, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while last_complete_checkpoint(run_dir / "checkpoints") is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"training exited ({proc.returncode}) before a checkpoint: {proc.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared in time")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    return proc.returncode


def test_sigkill_then_resume_gives_the_uninterrupted_adapter(tmp_path, tiny_qwen):
    reference = run_train(load_config(None, common(tiny_qwen, tmp_path / "ref")))

    run_dir = tmp_path / "killed"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  seed: 42\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "tunesmith.cli", "train", str(cfg_file), *common(tiny_qwen, run_dir)]
    assert kill_after_first_checkpoint(cmd, run_dir) == -signal.SIGKILL
    assert not (run_dir / "tunesmith.json").exists()  # a killed run never looks finished

    # Make the crash as bad as it gets: a newer checkpoint cut off mid-save, a metrics line cut short.
    last = last_complete_checkpoint(run_dir / "checkpoints")
    partial = run_dir / "checkpoints" / "checkpoint-35"
    shutil.copytree(last, partial, dirs_exist_ok=True)
    (partial / "trainer_state.json").write_text('{"global_step": 3', encoding="utf-8")
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"step": 36, "loss": 1.')

    resumed = run_train(load_config(None, [*common(tiny_qwen, run_dir), "train.resume=true"]))
    assert not partial.exists()  # skipped and removed; never resumed from
    want = load_file(reference / "adapter" / "adapter_model.safetensors")
    got = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)

    # Same batches in the same order after the resume: the logged losses match step by step,
    # and every step is logged once.
    ref_losses = {r["step"]: r["loss"] for r in read_metrics(reference) if "loss" in r}
    records = read_metrics(resumed)
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == sorted(ref_losses)
    assert len([r for r in records if "loss" in r]) == len(losses)
    for step, loss in ref_losses.items():
        assert losses[step] == pytest.approx(loss, rel=1e-4), step
    card = json.loads((resumed / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["metrics"]["steps"] == 40


def test_trim_metrics_keeps_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 0, "eval_loss": 2}\n{"step": 5, "loss": 1}\n{"step": 12, "loss": 0.5}\n{"st', "utf-8"
    )
    trim_metrics(path, 10)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 5]
