import pytest

from tunesmith.errors import ConfigError, ModelSourceError
from tunesmith.modeling import attach_lora, load_model, pick_dtype, resolve_source


def test_unknown_source_lists_everything_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as e:
        resolve_source("nobody/no-such-model")
    msg = str(e.value)
    assert "packaged names" in msg and "smollm2-135m-instruct" in msg
    assert "local path" in msg and "Hugging Face hub id 'nobody/no-such-model'" in msg
    with pytest.raises(ModelSourceError, match="not of the form owner/name"):
        resolve_source("just-a-name")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.gguf"))


def test_directory_without_config_points_at_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="holds m.gguf"):
        resolve_source(str(tmp_path))


def test_local_directory_and_content_hash(tiny_qwen):
    a = resolve_source(str(tiny_qwen))
    assert a.kind == "dir" and a.path == str(tiny_qwen) and len(a.content_hash) == 64
    assert resolve_source(str(tiny_qwen)).content_hash == a.content_hash


def test_lora_target_errors_list_linear_layers(tiny_qwen):
    model = load_model(tiny_qwen)
    with pytest.raises(ConfigError, match=r"\['query_key_value'\] not in this model.*q_proj"):
        attach_lora(model, 4, 8, 0.0, ["q_proj", "query_key_value"])


def test_dtype_choice():
    assert pick_dtype("float32", "cpu") == "float32"
    assert pick_dtype("auto", "cpu") in {"float32", "bfloat16"}
