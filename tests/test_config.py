from pathlib import Path

import pytest

from tunesmith.config import Config, load_config, parse_overrides
from tunesmith.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


BASE = "model:\n  source: some/model\ndata:\n  path: d.json\n"


def test_defaults_are_the_mission_recipe():
    c = Config()
    assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (8, 32, 0.1)
    assert c.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    t = c.train
    assert (t.learning_rate, t.batch_size, t.grad_accum, t.warmup_ratio) == (1e-4, 2, 2, 0.1)
    assert (t.weight_decay, t.epochs, t.min_lr, t.max_grad_norm) == (0.01, 3.0, 1e-6, 1.0)
    assert (t.logging_steps, t.save_steps) == (10, 100)
    assert c.data.max_length == 384
    g = c.generation
    assert (g.temperature, g.top_p, g.top_k, g.repetition_penalty, g.max_new_tokens) == (
        0.5,
        0.8,
        50,
        1.1,
        256,
    )


def test_overrides_apply_and_parse_scientific_notation(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE), ["lora.r=16", "train.learning_rate=5e-5", "data.system_prompt=你好"]
    )
    assert cfg.lora.r == 16
    assert cfg.train.learning_rate == pytest.approx(5e-5)
    assert cfg.data.system_prompt == "你好"


def test_all_problems_reported_together_with_hint(tmp_path):
    text = BASE + "lora:\n  rank: 4\n  alpha: many\ntrain:\n  learning_rate: fast\n  resume: 3\nextra: {}\n"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert len(e.value.problems) == 5, msg
    assert "unknown key `lora.rank`" in msg
    assert "`lora.alpha`: expected an integer" in msg
    assert "`train.learning_rate`: expected a number" in msg
    assert "`train.resume`: expected true or false" in msg
    assert "unknown section `extra`" in msg
    assert str(tmp_path / "c.yaml") in msg


def test_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean `train.learning_rate`"):
        load_config(write(tmp_path, BASE), ["train.learning_rat=1e-4"])
    with pytest.raises(ConfigError, match=r"did you mean `lora`"):
        load_config(write(tmp_path, BASE + "lroa:\n  r: 4\n"))


def test_required_and_ranges(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "data:\n  val_fraction: 1.5\n"))
    msg = str(e.value)
    assert "`model.source` is required" in msg and "`data.path` is required" in msg
    assert "`data.val_fraction` must be in [0, 1)" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["lora_r=3"])


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.source and cfg.data.path


def test_config_reference_documents_every_key():
    import dataclasses

    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f"`{section.name}.{f.name}`" in doc, f"{section.name}.{f.name} missing from docs/config.md"


def test_limit_and_sample_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ["model.source=m", "data.path=d.json", "data.limit=5", "data.sample=5"])
    with pytest.raises(ConfigError, match="data.sample"):
        load_config(None, ["model.source=m", "data.path=d.json", "data.sample=0"])
