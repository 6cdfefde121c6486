"""Near-duplicate detection: precision/recall on planted duplicates, speed and memory.

Synthetic data, built procedurally and deterministically from ``--seed``:

* Base records: 45% Chinese, 45% English, 10% mixed (Chinese with an English word or a number).
  Chinese text is a sequence of real words drawn from jieba's bundled dictionary with weights
  proportional to their corpus frequency, so unrelated records share common words and
  characters ("的", "我们") the way real data does. English text uses a vocabulary of 8,000
  pronounceable pseudo-words built from syllables, drawn with Zipf weights (rank^-1), so a few
  words are as common as "the" and "of". Sentences carry commas and a final "。", ".", "?" or
  "!". Base lengths are uniform in 20-200 characters, the range of instruction/role-play turns;
  unrelated bases share only common words, so their character-trigram Jaccard stays far below
  the threshold (among 100k records a couple of short English bases still collide above it;
  they count against precision although by text they are near duplicates).
* Planted variants: 30% of bases get 1-3 variants. 10% of variants are exact copies; the rest
  apply one to three of: a small edit (1-2 characters inserted, deleted or substituted),
  punctuation changes (full-width <-> half-width, or a mark dropped/added), width changes
  (ASCII letters and digits to full-width forms, full-width punctuation to half-width) and
  extra whitespace (spaces, tabs, ideographic spaces).
  Edits hit short records hardest: one substituted character in a 20-character record changes
  3 of ~18 trigrams and brings Jaccard to about 0.7, below the 0.8 threshold. Such pairs are
  not near duplicates by the definition the library implements, so the results report the
  share of planted pairs whose exact Jaccard is below the threshold, and recall both over all
  planted pairs and over the reachable ones.

Metrics: a planted pair is two records from the same base; recall is the share of planted
pairs that end up in the same cluster. Precision is reported twice: over the verified pairs
the library returns, and over every pair inside a returned cluster (stricter: a cluster is
transitive). Recall is also broken down by the normalised length of the shorter record of a
pair. The 20k quality run is repeated at threshold 0.7, to show what a lower threshold buys,
and with ``tokenizer="word"`` (jieba word bigrams; the trigram ground truth above does not
apply to it, so its ``recall_reachable`` is only indicative).

Speed: ``near_duplicate_clusters`` on 100k records end to end (normalisation included), with
peak RSS before and after it. Two baselines measured in the same run give the time context:
exact dedup (normalise + group) of the same 100k records, and, on a 10k subset, the plain
datasketch pipeline: MinHash with its default SHA1 hash per shingle and MinHashLSH with its
default (b, r) choice (its parameter search, ~0.4 s, is part of its time), candidates verified
with exact Jaccard like ours. ``tracemalloc`` peaks come from the separate 20k quality runs,
because tracing slows the timed run. Usage:

    .venv/bin/python bench/near_dedup.py [--quality-n 20000] [--speed-n 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import time
import tracemalloc
from collections import defaultdict
from itertools import accumulate, combinations
from pathlib import Path

import jieba
from datasketch import MinHash, MinHashLSH

from tunesmith.data.dedup import (
    exact_duplicate_groups,
    near_duplicate_clusters,
    near_duplicate_pairs,
    normalize_for_dedup,
)

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.8
HALF_TO_FULL_PUNCT = {",": "，", ".": "。", "?": "？", "!": "！", ":": "：", ";": "；"}
FULL_TO_HALF_PUNCT = {v: k for k, v in HALF_TO_FULL_PUNCT.items()}


class TextMaker:
    """Procedural Chinese/English/mixed sentences of a target length."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.zh_words, zh_weights = self._chinese_vocab()
        self.en_words = self._english_vocab(8000)
        # cumulative weights once: random.choices would otherwise re-sum ~100k weights per draw
        self.zh_cum = list(accumulate(zh_weights))
        self.en_cum = list(accumulate(1.0 / (rank + 1) for rank in range(len(self.en_words))))

    @staticmethod
    def _chinese_vocab() -> tuple[list[str], list[float]]:
        words, weights = [], []
        with jieba.get_dict_file() as f:
            for line in f.read().decode("utf-8").splitlines():
                word, freq = line.split(" ")[:2]
                if all("\u4e00" <= ch <= "\u9fff" for ch in word) and int(freq) >= 50:
                    words.append(word)
                    weights.append(float(freq))
        return words, weights

    def _english_vocab(self, size: int) -> list[str]:
        onsets = "b c d f g h j k l m n p r s t v w y z br ch cl dr fl gr pl pr sh st th tr".split()
        vowels = "a e i o u ai ea ee ie oa ou".split()
        codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]
        vocab: dict[str, None] = {}
        while len(vocab) < size:
            syllables = self.rng.choice((1, 1, 2, 2, 2, 3))
            word = "".join(self.rng.choice(onsets) + self.rng.choice(vowels) for _ in range(syllables))
            vocab[word + self.rng.choice(codas)] = None
        return list(vocab)

    def chinese(self, length: int, mixed: bool = False) -> str:
        out, since_comma = [], 0
        while sum(map(len, out)) < length:
            if mixed and self.rng.random() < 0.08:
                out.append(self.rng.choice([self.english_word(), str(self.rng.randint(2, 2048))]))
            else:
                out.extend(self.rng.choices(self.zh_words, cum_weights=self.zh_cum, k=1))
            since_comma += len(out[-1])
            if since_comma > self.rng.randint(6, 14):
                out.append("，")
                since_comma = 0
        return "".join(out).rstrip("，")[:length] + self.rng.choice("。。。？！")

    def english_word(self) -> str:
        return self.rng.choices(self.en_words, cum_weights=self.en_cum, k=1)[0]

    def english(self, length: int) -> str:
        words, size = [], 0
        while size < length:
            word = self.english_word() + ("," if self.rng.random() < 0.08 else "")
            words.append(word)
            size += len(word) + 1
        text = " ".join(words).rstrip(",")
        return text[0].upper() + text[1:] + self.rng.choice("...?!")

    def base(self) -> str:
        length, kind = self.rng.randint(20, 200), self.rng.random()
        if kind < 0.45:
            return self.chinese(length)
        if kind < 0.9:
            return self.english(length)
        return self.chinese(length, mixed=True)


def small_edit(text: str, maker: TextMaker, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 2)):
        pos = rng.randrange(len(text))
        chinese = "\u4e00" <= text[pos] <= "\u9fff"
        new = rng.choice(rng.choice(maker.zh_words)) if chinese else rng.choice("abcdefghijklmnopqrstuvwxyz")
        op = rng.choice(("insert", "delete", "substitute"))
        if op == "insert":
            text = text[:pos] + new + text[pos:]
        elif op == "delete" and len(text) > 1:
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + new + text[pos + 1 :]
    return text


def punctuation_change(text: str, rng: random.Random) -> str:
    table = rng.choice((HALF_TO_FULL_PUNCT, FULL_TO_HALF_PUNCT))
    text = "".join(table.get(ch, ch) for ch in text)
    if rng.random() < 0.5:  # drop the final mark, or add one mid-sentence
        pos = rng.randrange(len(text))
        text = text[:-1] if rng.random() < 0.5 else text[:pos] + rng.choice("，,、;") + text[pos:]
    return text


def width_change(text: str, rng: random.Random) -> str:
    if rng.random() < 0.5:  # ASCII letters/digits -> full-width forms (U+FF01..U+FF5E)
        return "".join(chr(ord(ch) + 0xFEE0) if ch.isascii() and ch.isalnum() else ch for ch in text)
    return "".join(FULL_TO_HALF_PUNCT.get(ch, ch) for ch in text)


def extra_spaces(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(text) + 1)
        text = text[:pos] + rng.choice((" ", "  ", "\u3000", "\t")) + text[pos:]
    return text.replace(" ", "  ") if rng.random() < 0.3 else text


def variant(text: str, maker: TextMaker, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return text  # exact copy
    changes = rng.sample(("edit", "punct", "width", "space"), rng.randint(1, 3))
    for change in changes:
        if change == "edit":
            text = small_edit(text, maker, rng)
        elif change == "punct":
            text = punctuation_change(text, rng)
        elif change == "width":
            text = width_change(text, rng)
        else:
            text = extra_spaces(text, rng)
    return text


def make_dataset(n: int, seed: int, maker: TextMaker | None = None) -> tuple[list[str], list[int]]:
    """Exactly ``n`` records (texts, base ids), shuffled; ~30% of bases carry planted variants."""
    rng = random.Random(seed)
    maker = maker or TextMaker(rng)
    records: list[tuple[str, int]] = []
    base_id = 0
    while len(records) < n:
        base = maker.base()
        records.append((base, base_id))
        if rng.random() < 0.3:
            records.extend((variant(base, maker, rng), base_id) for _ in range(rng.randint(1, 3)))
        base_id += 1
    records = records[:n]
    rng.shuffle(records)
    return [t for t, _ in records], [b for _, b in records]


def trigram_jaccard(a: str, b: str) -> float:
    # Written here, independent of the library, so that the ground truth does not share its code.
    def grams(s: str) -> set[str]:
        s = normalize_for_dedup(s)
        return {s[i : i + 3] for i in range(len(s) - 2)} if len(s) >= 3 else {s}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def recall_by_length(texts: list[str], planted: list[tuple[int, int]], found: list[bool]) -> dict:
    """Recall per length of the shorter normalised text of a planted pair: edits hurt short ones."""
    buckets: dict[str, list[bool]] = defaultdict(list)
    for (i, j), hit in zip(planted, found, strict=True):
        size = min(len(normalize_for_dedup(texts[i])), len(normalize_for_dedup(texts[j])))
        buckets["<40" if size < 40 else "40-79" if size < 80 else ">=80"].append(hit)
    return {
        k: {"pairs": len(buckets[k]), "recall": round(sum(buckets[k]) / len(buckets[k]), 4)}
        for k in ("<40", "40-79", ">=80")
        if buckets[k]
    }


def score(
    texts: list[str], bases: list[int], clusters: list[list[int]], pairs: list, threshold: float = THRESHOLD
) -> dict:
    """Precision/recall of predicted clusters and pairs against the planted groups."""
    by_base = defaultdict(list)
    for i, b in enumerate(bases):
        by_base[b].append(i)
    planted = [p for g in by_base.values() for p in combinations(g, 2)]
    cluster_of = {i: c for c, members in enumerate(clusters) for i in members}
    found = [cluster_of.get(i, -1) == cluster_of.get(j, -2) for i, j in planted]
    reachable = [trigram_jaccard(texts[i], texts[j]) >= threshold for i, j in planted]
    cluster_pairs = [p for members in clusters for p in combinations(members, 2)]
    return {
        "records": len(texts),
        "planted_pairs": len(planted),
        "planted_pairs_below_threshold": round(1 - sum(reachable) / max(1, len(planted)), 4),
        "recall": round(sum(found) / max(1, len(planted)), 4),
        "recall_reachable": round(
            sum(f for f, r in zip(found, reachable, strict=True) if r) / max(1, sum(reachable)), 4
        ),
        "recall_by_normalised_length": recall_by_length(texts, planted, found),
        "precision_pairs": round(sum(bases[i] == bases[j] for i, j, _ in pairs) / max(1, len(pairs)), 4),
        "precision_cluster_pairs": round(
            sum(bases[i] == bases[j] for i, j in cluster_pairs) / max(1, len(cluster_pairs)), 4
        ),
        "predicted_pairs": len(pairs),
        "clusters": len(clusters),
    }


def clusters_from_pairs(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        parent[find(j)] = find(i)
    groups = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def datasketch_default_pairs(texts: list[str]) -> list[tuple[int, int, float]]:
    """Baseline: datasketch out of the box (SHA1 per shingle, default LSH bands), exact verify."""
    grams = []
    for text in texts:
        s = normalize_for_dedup(text)
        grams.append({s[i : i + 3] for i in range(len(s) - 2)} if len(s) >= 3 else {s})
    sketches = MinHash.bulk([[g.encode("utf-8") for g in gs] for gs in grams], num_perm=128, seed=1)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    pairs = []
    for i, sketch in enumerate(sketches):
        for j in lsh.query(sketch):
            jac = len(grams[i] & grams[j]) / len(grams[i] | grams[j])
            if jac >= THRESHOLD:
                pairs.append((j, i, jac))
        lsh.insert(i, sketch)
    return pairs


def timed(fn, *args) -> tuple[object, float]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - t0, 3)


def maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def quality_run(n: int, seed: int, threshold: float, tokenizer: str = "auto") -> dict:
    texts, bases = make_dataset(n, seed)
    tracemalloc.start()
    t0 = time.perf_counter()
    pairs = near_duplicate_pairs(texts, threshold=threshold, tokenizer=tokenizer)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = score(texts, bases, clusters_from_pairs(len(texts), pairs), pairs, threshold)
    result["tracemalloc_peak_mb"] = round(peak / 2**20, 1)
    result["seconds_under_tracemalloc"] = round(seconds, 3)
    return result


def speed_run(n: int, seed: int, baseline_n: int) -> dict:
    texts, bases = make_dataset(n, seed + 1)
    rss_before = maxrss_mb()
    clusters, near_s = timed(near_duplicate_clusters, texts)
    rss_after = maxrss_mb()
    pairs = near_duplicate_pairs(texts, threshold=THRESHOLD)
    _, exact_s = timed(lambda t: exact_duplicate_groups([normalize_for_dedup(x) for x in t]), texts)
    sub, sub_bases = texts[:baseline_n], bases[:baseline_n]
    ours_sub, ours_sub_s = timed(near_duplicate_pairs, sub)
    default_sub, default_sub_s = timed(datasketch_default_pairs, sub)
    return {
        "near_dedup_s": near_s,
        "records_per_s": round(n / near_s),
        "maxrss_before_mb": rss_before,
        "maxrss_after_mb": rss_after,
        "quality": score(texts, bases, clusters, pairs),
        "baseline_exact_dedup_s": exact_s,
        "near_over_exact_time_ratio": round(near_s / exact_s, 1),
        f"subset_{baseline_n}": {
            "ours_s": ours_sub_s,
            "datasketch_default_s": default_sub_s,
            "speedup_vs_datasketch_default": round(default_sub_s / ours_sub_s, 1),
            "ours": score(sub, sub_bases, clusters_from_pairs(len(sub), ours_sub), ours_sub),
            "datasketch_default": score(
                sub, sub_bases, clusters_from_pairs(len(sub), default_sub), default_sub
            ),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality-n", type=int, default=20000)
    ap.add_argument("--speed-n", type=int, default=100000)
    ap.add_argument("--baseline-n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "near_dedup.json"))
    args = ap.parse_args()
    jieba.initialize()  # load jieba's dictionary now, not inside a timed section
    result = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "threshold": THRESHOLD,
        "params": "num_perm=128, ngram=3, tokenizer=auto (char 3-grams), seed=1",
        "speed": speed_run(args.speed_n, args.seed, args.baseline_n),
        "quality": quality_run(args.quality_n, args.seed, THRESHOLD),
        # same records, lower threshold: what it buys on short records (see the docstring)
        "quality_threshold_0.7": quality_run(args.quality_n, args.seed, 0.7),
        "quality_word_tokenizer": quality_run(args.quality_n, args.seed, THRESHOLD, "word"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
