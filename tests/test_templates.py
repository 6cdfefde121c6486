import pytest

from conftest import make_tokenizer
from tunesmith.errors import TemplateError
from tunesmith.templates import (
    BUILTIN_TEMPLATES,
    IGNORE_INDEX,
    ChatFormat,
    default_template_name,
    encode_all,
    resolve_template,
)

CONV = [
    {"role": "system", "content": "扮演甄嬛"},
    {"role": "user", "content": "你是谁？"},
    {"role": "assistant", "content": "我是甄嬛。"},
    {"role": "user", "content": "好"},
    {"role": "assistant", "content": "是。"},
]


@pytest.fixture(scope="module", params=[False, True], ids=["pad!=eos", "pad==eos"])
def fmt(request):
    tok = make_tokenizer(pad_is_eos=request.param)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ChatFormat(tok)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_end_of_turn_comes_from_the_template(fmt):
    assert fmt.eot_token == "<|im_end|>"
    assert fmt.eot_id == fmt.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_labels_cover_exactly_the_answers_and_their_end_token(fmt):
    tok = fmt.tokenizer
    ex = fmt.encode(CONV, max_length=512)
    # Build the expected sequence piece by piece from the same template text.
    p1 = fmt.render(CONV[:2], add_generation_prompt=True)
    a1 = "我是甄嬛。<|im_end|>"
    between = "\n" + fmt.render(CONV[:4], add_generation_prompt=True)[len(p1) + len(a1) + 1 :]
    a2 = "是。<|im_end|>"
    pieces = [(p1, False), (a1, True), (between, False), (a2, True), ("\n", False)]
    exp_ids, exp_labels = [], []
    for text, learn in pieces:
        ids = ids_of(tok, text)
        exp_ids += ids
        exp_labels += ids if learn else [IGNORE_INDEX] * len(ids)
    assert ex.input_ids == exp_ids
    assert ex.labels == exp_labels
    learned = [i for i in ex.labels if i != IGNORE_INDEX]
    assert learned.count(fmt.eot_id) == 2  # each answer ends with <|im_end|>, even when pad == eos
    assert tok.decode(learned) == "我是甄嬛。<|im_end|>是。<|im_end|>"


def test_collator_keeps_end_token_label_when_pad_is_eos(fmt):
    from transformers import DataCollatorForSeq2Seq

    short = fmt.encode(CONV[:3], 512)
    long = fmt.encode(CONV, 512)
    coll = DataCollatorForSeq2Seq(fmt.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    batch = coll(
        [
            {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in (short, long)
        ]
    )
    row = batch["labels"][0].tolist()
    n = len(short.input_ids)
    assert row[:n] == short.labels and set(row[n:]) == {IGNORE_INDEX}
    assert fmt.eot_id in row[:n]
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(row) - n)


def test_truncation_is_counted_and_empty_answers_skipped(fmt):
    full = len(fmt.encode(CONV[:3], 512).input_ids)
    prompt_len = len(fmt.encode_prompt(CONV[:2]))
    examples, rep = encode_all(fmt, [CONV[:3], CONV[:3]], max_length=full - 2)
    assert rep.truncated == 2 and rep.skipped == 0 and rep.kept == 2
    assert all(len(e.input_ids) == full - 2 for e in examples)
    examples, rep = encode_all(fmt, [CONV[:3]], max_length=prompt_len)
    assert rep.skipped == 1 and rep.kept == 0 and examples == []


def test_generation_prompt_matches_training_prefix(fmt):
    ex = fmt.encode(CONV[:3], 512)
    prompt = fmt.encode_prompt(CONV[:2])
    assert ex.input_ids[: len(prompt)] == prompt
    assert all(x == IGNORE_INDEX for x in ex.labels[: len(prompt)])


def test_template_errors():
    tok = make_tokenizer(pad_is_eos=False)
    tok.chat_template = None
    assert "<|im_end|>" in resolve_template(tok, "chatml")
    with pytest.raises(TemplateError, match="not a builtin"):
        resolve_template(tok, "nonexistent-template")
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateError, match="could never learn to stop"):
        ChatFormat(tok, plain)


def base_tokenizer(specials: list[str], eos: str | None, bos: str | None = None):
    """A byte-level BPE tokenizer with no chat template, as a base model's GGUF brings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import _corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus() + ["User: Assistant: model"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token="<pad>")


def _learned(fmt, conv):
    ex = fmt.encode(conv, 512)
    return ex, [i for i in ex.labels if i != IGNORE_INDEX]


def test_gemma_turns_by_name():
    tok = base_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>")
    assert tok.chat_template is None and default_template_name(tok) == "plain"  # measured: see templates.py
    fmt = ChatFormat(tok, resolve_template(tok, "gemma"))
    assert fmt.eot_token == "<end_of_turn>"
    text = fmt.render(CONV)
    # BOS first; Gemma has no system role, so the system prompt opens the first user turn.
    assert text.startswith(
        "<bos><start_of_turn>user\n扮演甄嬛\n\n你是谁？<end_of_turn>\n<start_of_turn>model\n"
    )
    assert text.count("扮演甄嬛") == 1
    ex, learned = _learned(fmt, CONV)
    assert tok.decode(learned) == "我是甄嬛。<end_of_turn>是。<end_of_turn>"
    assert ex.labels[-1] == IGNORE_INDEX and ex.input_ids[-2] == fmt.eot_id  # end token learned, "\n" not
    prompt = fmt.encode_prompt(CONV[:2])
    assert ex.input_ids[: len(prompt)] == prompt and tok.decode(prompt).endswith("<start_of_turn>model\n")


def test_base_model_without_markers_ends_answers_with_its_eos():
    tok = base_tokenizer(["<pad>", "</s>", "<s>"], "</s>", "<s>")
    assert default_template_name(tok) == "plain"
    fmt = ChatFormat(tok, resolve_template(tok, None))
    assert fmt.eot_token == "</s>" and fmt.eot_id == tok.eos_token_id
    assert fmt.render(CONV[:3]) == "<s>扮演甄嬛\n\nUser: 你是谁？\nAssistant: 我是甄嬛。</s>\n"
    _, learned = _learned(fmt, CONV)
    assert tok.decode(learned) == "我是甄嬛。</s>是。</s>"


def test_base_model_default_is_plain_even_with_turn_markers_in_the_vocabulary():
    tok = make_tokenizer(pad_is_eos=False)
    tok.chat_template = None
    assert resolve_template(tok, None) == BUILTIN_TEMPLATES["plain"]
    assert ChatFormat(tok, resolve_template(tok, None)).eot_token == tok.eos_token


def test_base_model_that_could_never_stop_is_refused():
    tok = base_tokenizer(["<pad>"], None)
    with pytest.raises(TemplateError, match="no chat template and no end-of-sequence token"):
        resolve_template(tok, None)
