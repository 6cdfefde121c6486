import pytest

from conftest import make_tokenizer
from tunesmith.errors import TemplateError
from tunesmith.templates import IGNORE_INDEX, ChatFormat, encode_all, resolve_template

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
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_template(tok, None)
    assert "<|im_end|>" in resolve_template(tok, "chatml")
    with pytest.raises(TemplateError, match="not a builtin"):
        resolve_template(tok, "nonexistent-template")
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateError, match="could never learn to stop"):
        ChatFormat(tok, plain)
