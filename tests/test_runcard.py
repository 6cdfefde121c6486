"""The run card is the one contract between training and every later stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLE_DATA, write_json
from threads import one_thread
from tunesmith.errors import RunDirError, TemplateError
from tunesmith.evaluation import EvalOptions, run_eval
from tunesmith.export import ExportOptions, run_export
from tunesmith.runcard import FORMAT_VERSION, RunCard, read_run_card
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.serving.app import create_app
from tunesmith.serving.server import ServerThread, build_backend
from tunesmith.templates import ChatFormat

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "run_v1"  # written by tunesmith 0.1.0 (card format 1)
RECORDS = json.loads(EXAMPLE_DATA.read_text(encoding="utf-8"))


def edit_card(run: Path, **changes) -> None:
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    card.update(changes)
    (run / "tunesmith.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")


def v1_run(tmp_path: Path, tiny_qwen: Path) -> Path:
    run = shutil.copytree(FIXTURE_V1, tmp_path / "run_v1")
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    edit_card(run, base_model={**card["base_model"], "source": str(tiny_qwen)})
    return run


def test_a_format_1_card_is_migrated_on_read(tmp_path, tiny_qwen):
    run = v1_run(tmp_path, tiny_qwen)
    assert json.loads((run / "tunesmith.json").read_text())["format_version"] == 1
    card = RunCard.load(run)
    assert card.format_version == FORMAT_VERSION == 2
    assert card.max_length == 256  # the run's data.max_length, from its config.yaml
    assert card.trust_remote_code is False
    assert card.template["text"] == (run / "tokenizer" / "chat_template.jinja").read_text(encoding="utf-8")
    assert card.end_of_turn == "<|im_end|>"
    assert card.sampling.temperature == 0


def test_a_format_1_card_without_its_config_takes_the_training_default(tmp_path, tiny_qwen):
    run = v1_run(tmp_path, tiny_qwen)
    (run / "config.yaml").unlink()
    assert read_run_card(run).max_length == 384


def test_a_format_1_run_still_chats(tmp_path, tiny_qwen):
    bot = load_chatbot(v1_run(tmp_path, tiny_qwen), device="cpu")
    assert bot.fmt.eot_token == "<|im_end|>"
    assert isinstance(
        bot.answer([{"role": "user", "content": "你是谁？"}], bot.defaults.updated(max_new_tokens=4)), str
    )


def test_a_card_from_a_newer_tunesmith_is_refused(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    edit_card(run, format_version=FORMAT_VERSION + 1)
    with pytest.raises(RunDirError, match="newer than this tunesmith reads"):
        read_run_card(run)


def test_unknown_sampling_settings_in_a_card_are_an_error(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    edit_card(run, generation={**card["generation"], "temprature": 0.3})
    with pytest.raises(RunDirError, match="temprature"):
        read_run_card(run)


def test_a_changed_tokenizer_template_is_an_error_naming_both_fingerprints(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    recorded = read_run_card(run).template["fingerprint"]
    jinja = run / "tokenizer" / "chat_template.jinja"
    jinja.write_text(jinja.read_text(encoding="utf-8") + "{# edited #}", encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        load_chatbot(run, device="cpu")
    msg = str(err.value)
    assert recorded in msg and "is not the one the run was trained with" in msg and "restore" in msg


def test_a_card_whose_template_text_does_not_match_its_fingerprint_is_an_error(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    edit_card(run, template={**card["template"], "fingerprint": "0123456789abcdef"})
    with pytest.raises(TemplateError, match="0123456789abcdef"):
        load_chatbot(run, device="cpu")


def test_the_card_holds_what_every_stage_needs(tiny_run):
    card = RunCard.load(tiny_run)
    assert card.template["text"] and card.template["fingerprint"] and card.end_of_turn == "<|im_end|>"
    assert card.max_length == 384 and card.dtype == "float32" and card.trust_remote_code is False
    assert card.system_prompt and card.sampling.max_new_tokens == 12 and card.adapter == "adapter"


def test_chat_eval_serve_and_export_read_the_card_not_the_config(tmp_path, tiny_run, monkeypatch):
    """With config.yaml unreadable and end-of-turn detection switched off, every stage still works,
    and the max length they use is the card's."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "config.yaml").unlink()
    (run / "config.yaml").mkdir()  # reading it now fails
    edit_card(run, max_length=40)

    def no_detection(self):
        raise AssertionError("the end-of-turn token was re-detected instead of read from the card")

    monkeypatch.setattr(ChatFormat, "_detect_eot", no_detection)
    lengths = []
    encode = ChatFormat.encode

    def spy(self, msgs, max_length):
        lengths.append(max_length)
        return encode(self, msgs, max_length)

    monkeypatch.setattr(ChatFormat, "encode", spy)
    eot = read_run_card(run).end_of_turn

    bot = load_chatbot(run, device="cpu")  # chat
    assert bot.fmt.eot_token == eot and bot.stop_ids()[0] == bot.fmt.tokenizer.convert_tokens_to_ids(eot)
    bot.answer([{"role": "user", "content": "你是谁？"}])

    data = write_json(tmp_path / "eval.json", RECORDS[40:43])  # eval
    res = run_eval(
        run, data, EvalOptions(limit=3, samples=0, batch_size=3, progress=False, out_dir=tmp_path / "e")
    )
    assert res.metrics["max_length"] == 40

    backend = build_backend({"r": run}, device="cpu")  # serve
    with one_thread(), ServerThread(create_app(backend)) as srv:
        body = {"model": "r", "messages": [{"role": "user", "content": "你是谁？"}], "max_tokens": 4}
        reply = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert backend.models["r"].bot.fmt.eot_token == eot

    lengths.clear()
    run_export(run, tmp_path / "exp", ExportOptions(quantize="int8", eval_records=2))  # export
    assert lengths and set(lengths) == {40}
    assert read_run_card(tmp_path / "exp").end_of_turn == eot


def custom_code_model(tiny_qwen: Path, dest: Path) -> Path:
    """The tiny Qwen2 as a model whose config and class come from .py files in its own folder."""
    model = shutil.copytree(tiny_qwen, dest)
    (model / "configuration_tinycustom.py").write_text(
        "from transformers import Qwen2Config\n\n\n"
        "class TinyCustomConfig(Qwen2Config):\n    model_type = 'tiny_custom'\n"
    )
    (model / "modeling_tinycustom.py").write_text(
        "from transformers import Qwen2ForCausalLM\n\n"
        "from .configuration_tinycustom import TinyCustomConfig\n\n\n"
        "class TinyCustomForCausalLM(Qwen2ForCausalLM):\n    config_class = TinyCustomConfig\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(
        model_type="tiny_custom",
        architectures=["TinyCustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tinycustom.TinyCustomConfig",
            "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM",
        },
    )
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_a_run_on_a_custom_code_model_can_be_chatted_with(tmp_path, tiny_qwen):
    from tunesmith.config import load_config
    from tunesmith.training import run_train

    model = custom_code_model(tiny_qwen, tmp_path / "custom")
    cfg = load_config(None, [
        f"model.source={model}", "model.trust_remote_code=true", f"data.path={EXAMPLE_DATA}",
        "data.limit=8", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.batch_size=4",
        "train.grad_accum=1", "train.dtype=float32", "generation.temperature=0",
    ])  # fmt: skip
    run = run_train(cfg)
    assert read_run_card(run).trust_remote_code is True
    bot = load_chatbot(run, device="cpu")
    assert type(bot.model.get_base_model()).__name__ == "TinyCustomForCausalLM"
    assert isinstance(
        bot.answer([{"role": "user", "content": "你是谁？"}], bot.defaults.updated(max_new_tokens=4)), str
    )

    edit_card(run, trust_remote_code=False)  # what the card says is what loading does
    with pytest.raises(Exception, match="trust_remote_code"):
        load_chatbot(run, device="cpu")
