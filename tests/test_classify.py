"""Text classification (`model.task: classification`) on a tiny BERT built from a config, with a
WordPiece tokenizer trained on the fly: full and LoRA fine-tuning, CSV/JSONL/Label Studio data,
accuracy and macro-F1 in the run card, and bad data refused before training."""

import csv
import json
import random

import pytest

from conftest import write_json
from threads import one_torch_thread  # noqa: F401  (autouse)
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DatasetError, RunDirError
from tunesmith.runtime.chatbot import load_chatbot
from tunesmith.runtime.classifier import load_classifier
from tunesmith.training import run_train

WORDS = {
    "positive": ["good", "great", "wonderful", "excellent", "lovely"],
    "negative": ["bad", "awful", "terrible", "boring", "poor"],
    "neutral": ["okay", "average", "fine", "ordinary", "acceptable"],
}
SUBJECTS = ["the film", "this book", "the meal", "our trip", "the show", "that song", "the hotel", "his talk"]
TEMPLATES = ["{s} was {w}", "i found {s} {w}", "honestly {s} felt {w}", "everyone said {s} is {w}"]


def sentiment_records(n_per_label=40, seed=0):
    rng = random.Random(seed)
    out = []
    for label, words in WORDS.items():
        for _ in range(n_per_label):
            text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=rng.choice(words))
            out.append({"text": text, "label": label})
    rng.shuffle(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT (hidden 64) and a WordPiece tokenizer whose vocabulary is built from the corpus.

    The vocabulary is every word of the corpus, in sorted order, rather than the output of a
    WordPiece trainer: the trainer breaks ties in hash order, which would change the token ids,
    and with them the tiny model's training, from one run to the next.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for r in sentiment_records(60, seed=1) for w in r["text"].split()} | {"never", "here"})
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", specials.index("[CLS]")), ("[SEP]", specials.index("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=fast.pad_token_id,
        hidden_dropout_prob=0.0,  # a tiny model learns the task reliably without dropout
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def cfg(tmp_path, model_dir, data_path, *extra):
    return load_config(
        None,
        [
            "model.task=classification",
            f"model.source={model_dir}",
            f"data.path={data_path}",
            "data.val_fraction=0.25",
            "data.max_length=32",
            f"train.output_dir={tmp_path / 'run'}",
            "train.batch_size=8",
            "train.grad_accum=1",
            "train.learning_rate=3e-3",
            "train.warmup_ratio=0",
            "train.max_steps=60",
            "train.save_steps=30",
            "train.logging_steps=10",
            "train.dtype=float32",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_bert):
    """A fully fine-tuned classifier on the three-way sentiment records."""
    tmp_path = tmp_path_factory.mktemp("full")
    data = tmp_path / "sentiment.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_records()), encoding="utf-8")
    extra = ["lora.method=full", "train.learning_rate=1e-3", "train.max_steps=200", "train.save_steps=100"]
    return run_train(cfg(tmp_path, tiny_bert, data, *extra))


def test_full_fine_tuning_learns_and_reports_accuracy_and_macro_f1(full_run):
    run = full_run
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["task"] == "classification" and card["method"] == "full" and card["adapter"] == "model"
    assert card["data"]["labels"] == ["negative", "neutral", "positive"]
    m = card["metrics"]
    assert m["accuracy"] >= 0.9 and m["macro_f1"] >= 0.9 and m["accuracy_before"] < 0.6
    assert m["eval_loss"] < m["eval_loss_before"]
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert all(c["validation"] >= 8 for c in report["labels"].values())  # stratified: each label held out

    clf = load_classifier(run, device="cpu")
    got = clf.predict(["the meal was excellent", "honestly the show felt awful"])
    assert [g["label"] for g in got] == ["positive", "negative"]
    assert sum(got[0]["scores"].values()) == pytest.approx(1.0)
    with pytest.raises(RunDirError, match="tunesmith classify"):
        load_chatbot(run)


def test_classify_command_labels_texts_and_scores_a_labelled_file(full_run, tmp_path, capsys):
    from tunesmith.cli.main import main

    run = full_run
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["data"]["max_length"] == 32 and card["data"]["text_field"] == "text"
    capsys.readouterr()

    assert (
        main(["classify", str(run), "the meal was excellent", "i found the film awful", "--device=cpu"]) == 0
    )
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(label, text) for label, _, text in lines] == [
        ("positive", "the meal was excellent"),
        ("negative", "i found the film awful"),
    ]
    assert all(0.34 < float(p) <= 1 for _, p, _ in lines)

    # A held-out labelled file: predictions as JSON lines, and accuracy against its labels.
    test = [{"review": r["text"], "label": r["label"]} for r in sentiment_records(10, seed=7)]
    test.append({"review": "the show was lovely"})  # no label: labelled, not scored
    (tmp_path / "test.json").write_text(json.dumps(test), encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    argv = ["classify", str(run), "--file", str(tmp_path / "test.json"), "--text-field", "review"]
    assert main([*argv, "--output", str(out), "--device=cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 31 and [r["text"] for r in rows] == [t["review"] for t in test]
    assert "gold" not in rows[-1]
    assert [r["gold"] for r in rows[:-1]] == [t["label"] for t in test[:-1]]
    right = sum(r["label"] == r["gold"] for r in rows[:-1])
    err = capsys.readouterr().err
    assert f"30 of 31 records carry a 'label': accuracy {right / 30:.4f}" in err
    assert right >= 27

    # Bad input names the file and record; a chat run is refused with the command to use.
    (tmp_path / "bad.jsonl").write_text('{"review": "fine"}\n{"body": "x"}\n', encoding="utf-8")
    assert main(["classify", str(run), "--file", str(tmp_path / "bad.jsonl"), "--text-field", "review"]) == 2
    assert "bad.jsonl, record 1: no text: field 'review'" in capsys.readouterr().err
    assert main(["classify", str(run)]) == 2
    assert "give texts to label" in capsys.readouterr().err


def test_lora_on_csv_saves_the_adapter_with_the_head(tmp_path, tiny_bert):
    data = tmp_path / "sentiment.csv"
    with data.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows({"review": r["text"], "sentiment": r["label"]} for r in sentiment_records())
    extra = ["data.text_field=review", "data.label_field=sentiment", "train.learning_rate=1e-2"]
    run = run_train(cfg(tmp_path, tiny_bert, data, *extra))
    card = json.loads((run / "tunesmith.json").read_text(encoding="utf-8"))
    assert card["method"] == "lora" and card["adapter"] == "adapter"
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"query", "value"}  # PEFT's targets for BERT
    assert "classifier" in adapter_cfg["modules_to_save"]
    m = card["metrics"]
    assert m["eval_loss"] < m["eval_loss_before"] and {"accuracy", "macro_f1"} <= set(m)
    clf = load_classifier(run, device="cpu")
    assert clf.predict(["the film was good"])[0]["label"] in card["data"]["labels"]


def label_studio_export(records):
    return [
        {
            "id": i,
            "data": {"text": r["text"]},
            "annotations": [
                {
                    "completed_by": 1,
                    "result": [
                        {
                            "from_name": "sentiment",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": [r["label"]]},
                        }
                    ],
                }
            ],
        }
        for i, r in enumerate(records)
    ]


def test_label_studio_export_trains_directly(tmp_path, tiny_bert):
    export = label_studio_export(sentiment_records(12))
    export.append({"id": 999, "data": {"text": "never annotated"}, "annotations": []})
    path = write_json(tmp_path / "export.json", export)
    run = run_train(cfg(tmp_path, tiny_bert, path, "lora.method=full", "train.max_steps=2"))
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert report["source"] == "label-studio" and report["records"] == 36
    assert report["label_studio"]["skipped"]["unannotated"] == 1


def test_records_without_labels_fail_before_anything_is_written(tmp_path, tiny_bert):
    rows = sentiment_records(5)
    rows[7] = {"text": "no label here"}
    path = write_json(tmp_path / "d.json", rows)
    with pytest.raises(
        DatasetError, match=r"d\.json, record 7: no label: field 'label' is missing.*data.label_field"
    ):
        run_train(cfg(tmp_path, tiny_bert, path))
    assert not (tmp_path / "run").exists()
    one_label = write_json(tmp_path / "one.json", [{"text": f"t{i}", "label": "a"} for i in range(6)])
    with pytest.raises(DatasetError, match="at least two different labels"):
        run_train(cfg(tmp_path, tiny_bert, one_label))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lora.method=prompt_tuning"], "not `lora.method: prompt_tuning`"),
        (["data.replay_path=g.json", "data.replay_ratio=0.1"], "does not take"),
    ],
)
def test_classification_refuses_chat_only_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.task=classification", "model.source=m", "data.path=d.json", *overrides])
