"""Metric code against sacrebleu's own results and hand-computed ROUGE, distinct-n and BLEU."""

import math

import pytest
import sacrebleu

from tunesmith.evaluation.metrics import (
    answer_metrics,
    bleu4,
    chars,
    distinct_n,
    lcs_length,
    loop_rate,
    rouge,
    rouge_l,
    rouge_n,
    words,
)

HYPS = ["今天天气很好，我们去公园。", "嫔妾甄嬛，家父大理寺少卿。", "臣妾不知。", "Hello world 你好"]
REFS = [
    "今天天气不错，我们去公园玩。",
    "嫔妾甄嬛，家父是大理寺少卿甄远道。",
    "皇上，臣妾真的不知道。",
    "hello 你好",
]


def test_bleu_equals_sacrebleu_with_the_chinese_tokenizer():
    expected = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="zh").score
    assert bleu4(HYPS, REFS) == pytest.approx(expected)
    # and it is not what the default (13a) tokenizer says: Chinese must be split into characters
    assert bleu4(HYPS, REFS) != pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)


def test_bleu_hand_computed():
    # hyp 今天天气很好我们去公园 (11 chars), ref 今天天气不错我们去公园玩 (12 chars), each char a token.
    # matched n-grams: 1: 9/11, 2: 7/10, 3: 5/9, 4: 3/8; brevity penalty exp(1 - 12/11).
    hand = math.exp(1 - 12 / 11) * math.exp(
        (math.log(9 / 11) + math.log(7 / 10) + math.log(5 / 9) + math.log(3 / 8)) / 4
    )
    assert bleu4(["今天天气很好我们去公园"], ["今天天气不错我们去公园玩"]) == pytest.approx(100 * hand)
    assert bleu4(["我爱北京天安门"], ["我爱北京天安门"]) == pytest.approx(100)


def test_tokenizers_drop_punctuation_and_fold_case():
    assert chars("你好，World!") == ["你", "好", "w", "o", "r", "l", "d"]
    assert words("我爱北京天安门。") == ["我", "爱", "北京", "天安门"]


def test_rouge_n_and_l_hand_computed():
    hyp, ref = list("abcab"), list("abdab")
    # unigrams: hyp a2 b2 c1, ref a2 b2 d1 → overlap 4; P = R = 4/5
    assert rouge_n(hyp, ref, 1) == pytest.approx(0.8)
    # bigrams: hyp ab bc ca ab, ref ab bd da ab → overlap 2 (ab twice); P = R = 2/4
    assert rouge_n(hyp, ref, 2) == pytest.approx(0.5)
    # LCS a b a b = 4 → P = R = 4/5
    assert lcs_length(hyp, ref) == 4
    assert rouge_l(hyp, ref) == pytest.approx(0.8)
    # unequal lengths: hyp a b, ref a b c d → P 1, R 0.5, F 2/3
    assert rouge_n(list("ab"), list("abcd"), 1) == pytest.approx(2 / 3)
    assert rouge_l(list("acb"), list("ab")) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert rouge_n([], list("ab"), 1) == 0.0
    assert rouge_l(list("ab"), []) == 0.0


def test_rouge_on_chinese_words_and_characters():
    # jieba: 我 / 爱 / 北京 vs 我 / 爱 / 上海 → 2 of 3 words; characters: 2 of 4
    assert rouge(["我爱北京"], ["我爱上海"], words)["rouge1"] == pytest.approx(100 * 2 / 3)
    assert rouge(["我爱北京"], ["我爱上海"], chars)["rouge1"] == pytest.approx(100 * 2 / 4)
    r = rouge(["我爱北京", "你好"], ["我爱北京", "再见"], chars)
    assert r == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})  # mean of 100 and 0


def test_distinct_n_hand_computed():
    texts = ["a b a", "a c"]
    split = str.split
    # unigrams a b a a c: 3 unique of 5; bigrams (a b) (b a) (a c): 3 of 3
    assert distinct_n(texts, 1, split) == pytest.approx(3 / 5)
    assert distinct_n(texts, 2, split) == pytest.approx(1.0)
    assert distinct_n(["是是是是"], 1, chars) == pytest.approx(1 / 4)
    assert distinct_n([], 2) == 0.0


def test_loop_rate_uses_the_data_check():
    assert loop_rate(["华妃娘娘华妃娘娘华妃娘娘", "臣妾告退。"]) == pytest.approx(0.5)
    assert loop_rate([]) == 0.0


def test_answer_metrics_without_references_skips_reference_metrics():
    m = answer_metrics(["你好", "再见再见"], [None, None], [3, 12], [True, False])
    assert "bleu4" not in m and "rougeL" not in m
    assert m["stop_rate"] == 0.5
    assert m["mean_tokens"] == 7.5
    assert m["mean_chars"] == 3.0
    partial = answer_metrics(["你好", "再见"], ["你好", None], [1, 1], [True, True])
    assert partial["bleu4"] == pytest.approx(bleu4(["你好"], ["你好"]))  # only the pair with a reference
    assert partial["rouge1_char"] == pytest.approx(100.0)
