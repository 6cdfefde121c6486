"""Text metrics of generated answers: BLEU-4, ROUGE-1/2/L, distinct-n, looping, length, stop rate.

Chinese-aware throughout. BLEU-4 is sacrebleu's corpus BLEU with its Chinese tokenizer
(``tokenize="zh"``: every CJK character a token, other text split as in 13a). ROUGE is computed
here over jieba words or over characters, because the ``rouge-score`` package keeps only
``[a-z0-9]`` tokens and so scores any Chinese text as empty; the formulas are those of Lin
(2004) and ``rouge-score``: ROUGE-N from clipped n-gram overlap, ROUGE-L from the longest common
subsequence, each as an F1 averaged over the answers. Scores are 0-100 for BLEU and ROUGE (the
usual way to quote them) and 0-1 shares for the rest.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..data.textcheck import looping_phrase

Tokenizer = Callable[[str], list[str]]


def _is_word(token: str) -> bool:
    """False for tokens made only of punctuation, symbols, spaces or control characters."""
    return any(unicodedata.category(c)[0] not in "PZSC" for c in token)


def words(text: str) -> list[str]:
    """jieba words of ``text``, lower-cased, without punctuation and whitespace tokens."""
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading notice is not ours to print
    return [w.lower() for w in jieba.lcut(text) if _is_word(w)]


def chars(text: str) -> list[str]:
    """The characters of ``text``, lower-cased, without punctuation and whitespace."""
    return [c.lower() for c in text if _is_word(c)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _f1(overlap: float, n_hyp: int, n_ref: int) -> float:
    if overlap == 0 or n_hyp == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_hyp, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-N F1 (0-1) of one answer: n-gram overlap clipped by the counts in each text."""
    h, r = Counter(ngrams(hyp, n)), Counter(ngrams(ref, n))
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row kept)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 (0-1) of one answer, from the longest common subsequence."""
    return _f1(lcs_length(hyp, ref), len(hyp), len(ref))


def rouge(hyps: Sequence[str], refs: Sequence[str], tokenize: Tokenizer = words) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over answer/reference pairs, on a 0-100 scale."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} answers but {len(refs)} references")
    if not hyps:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    totals = Counter()
    for hyp, ref in zip(hyps, refs, strict=True):
        h, r = tokenize(hyp), tokenize(ref)
        totals["rouge1"] += rouge_n(h, r, 1)
        totals["rouge2"] += rouge_n(h, r, 2)
        totals["rougeL"] += rouge_l(h, r)
    return {k: 100 * totals[k] / len(hyps) for k in ("rouge1", "rouge2", "rougeL")}


def bleu4(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) with one reference per answer, sacrebleu's Chinese tokenizer."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} answers but {len(refs)} references")
    return float(sacrebleu.BLEU(tokenize="zh").corpus_score(list(hyps), [list(refs)]).score)


def distinct_n(texts: Sequence[str], n: int, tokenize: Tokenizer = words) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams over all answers (0-1)."""
    grams = [g for t in texts for g in ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def loop_rate(texts: Sequence[str]) -> float:
    """Share of answers with a looping phrase (``data.textcheck.looping_phrase``)."""
    return sum(looping_phrase(t) is not None for t in texts) / len(texts) if texts else 0.0


REFERENCE_METRICS = ("bleu4", "rouge1", "rouge2", "rougeL", "rouge1_char", "rouge2_char", "rougeL_char")


def answer_metrics(
    answers: Sequence[str],
    references: Sequence[str | None],
    completion_tokens: Sequence[int],
    stopped: Sequence[bool],
) -> dict[str, float]:
    """Every generation metric of one set of answers.

    Reference-based metrics (``REFERENCE_METRICS``) use the answers that have a reference and
    are left out when none has; the others use all answers.

    Args:
        answers: generated texts.
        references: the reference answer of each, or None.
        completion_tokens: tokens generated for each answer.
        stopped: whether each answer ended with a stop token rather than the token limit.
    """
    n = len(answers)
    if not (n == len(references) == len(completion_tokens) == len(stopped)):
        raise ValueError("answers, references, completion_tokens and stopped differ in length")
    out: dict[str, float] = {
        "distinct1": distinct_n(answers, 1),
        "distinct2": distinct_n(answers, 2),
        "loop_rate": loop_rate(answers),
        "mean_chars": sum(len(a) for a in answers) / n if n else 0.0,
        "mean_tokens": sum(completion_tokens) / n if n else 0.0,
        "stop_rate": sum(stopped) / n if n else 0.0,
    }
    pairs = [(a, r) for a, r in zip(answers, references, strict=True) if r is not None]
    if pairs:
        hyps, refs = [a for a, _ in pairs], [r for _, r in pairs]
        out["bleu4"] = bleu4(hyps, refs)
        out.update(rouge(hyps, refs, words))
        out.update({f"{k}_char": v for k, v in rouge(hyps, refs, chars).items()})
    return out


def label_metrics(truth: Any, guess: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (over the labels present in either) of predicted against true labels."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, guess)),
        "macro_f1": float(f1_score(truth, guess, average="macro", zero_division=0)),
    }
