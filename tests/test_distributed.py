"""DDP: `tunesmith train` under torchrun (2 CPU processes, gloo) follows the loss curve of one process
with the same global batch, and only rank 0 writes the run directory."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import EXAMPLE_DATA
from test_train import read_metrics
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DependencyError
from tunesmith.training import run_train
from tunesmith.training.distributed import check_deepspeed

REPO = EXAMPLE_DATA.parents[2]


def common(model_dir, out, batch_size):
    return [
        f"model.source={model_dir}",
        f"data.path={EXAMPLE_DATA}",
        "data.limit=48",
        "data.val_fraction=0.125",
        "lora.dropout=0",
        f"train.output_dir={out}",
        "train.max_steps=8",
        "train.save_steps=4",
        "train.logging_steps=1",
        f"train.batch_size={batch_size}",
        "train.grad_accum=1",
        "train.learning_rate=3e-3",
        "train.dtype=float32",
        "train.device=cpu",
    ]


def files(run_dir):
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"],
    # accelerate's multi-process launcher (it runs torch.distributed; gloo on CPUs)
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    + ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_qwen):
    out = tmp_path_factory.mktemp("one") / "run"
    return run_train(load_config(None, common(tiny_qwen, out, batch_size=4)))


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, tiny_qwen, one_process_run, launcher):
    one = one_process_run
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  seed: 42\n", encoding="utf-8")
    train = ["-m", "tunesmith.cli", "train", str(cfg_file)]
    cmd = [sys.executable, *LAUNCHERS[launcher], *train, *common(tiny_qwen, tmp_path / "two", 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"

    # Same global batch (1 × 4 and 2 × 2) in the same order: the same training loss at every step.
    want = {r["step"]: r["loss"] for r in read_metrics(one) if "loss" in r}
    got = [(r["step"], r["loss"]) for r in read_metrics(two) if "loss" in r]
    assert [s for s, _ in got] == sorted(want)  # rank 0 alone logs: each step once
    for step, loss in got:
        assert loss == pytest.approx(want[step], rel=1e-3), step
    # The validation loss is HF's per-batch mean over shards (here 3 + 3 examples): close, not equal.
    card_one = json.loads((one / "tunesmith.json").read_text(encoding="utf-8"))
    card_two = json.loads((two / "tunesmith.json").read_text(encoding="utf-8"))
    assert card_two["metrics"]["eval_loss"] == pytest.approx(card_one["metrics"]["eval_loss"], rel=0.05)
    assert card_two["metrics"]["steps"] == 8

    a = load_file(one / "adapter" / "adapter_model.safetensors")
    b = load_file(two / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)

    # Only rank 0 wrote the run dir: the same files as one process, plus rank 1's RNG state.
    per_rank = {f for f in files(two) if "rng_state_" in f}
    assert {f.rsplit("/", 1)[-1] for f in per_rank} == {"rng_state_0.pth", "rng_state_1.pth"}
    strip = {f for f in files(one) if "rng_state" in f or "tfevents" in f}
    assert files(two) - per_rank - {f for f in files(two) if "tfevents" in f} == files(one) - strip


def test_more_processes_than_examples_fails_before_training(tmp_path, tiny_qwen, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(None, [*common(tiny_qwen, tmp_path / "run", 1), "data.limit=6", "data.val_fraction=0"])
    with pytest.raises(ConfigError, match=r"6 training example\(s\) cannot be spread over 8 processes"):
        run_train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_deepspeed_zero2_example_passes_through_and_bad_setups_are_refused(tmp_path):
    example = REPO / "examples" / "deepspeed_zero2.json"
    cfg = load_config(REPO / "examples" / "deepspeed_zero2.yaml")
    assert cfg.train.trainer_args["deepspeed"] == "examples/deepspeed_zero2.json"
    assert json.loads(example.read_text())["zero_optimization"]["stage"] == 2
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        check_deepspeed({"deepspeed": str(example)}, "cpu")
    with pytest.raises(ConfigError, match="stage 3"):
        check_deepspeed({"deepspeed": {"zero_optimization": {"stage": 3}}}, "cuda")
    with pytest.raises(ConfigError, match="cannot read"):
        check_deepspeed({"deepspeed": str(tmp_path / "missing.json")}, "cuda")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyError, match="pip install deepspeed"):
            check_deepspeed({"deepspeed": str(example)}, "cuda")
    check_deepspeed({}, "cpu")  # no DeepSpeed asked for: nothing to check
