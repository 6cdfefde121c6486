"""Exact and near-duplicate detection for the data-cleaning stage.

Near duplicates are found in three steps:

1. Every text is normalised (:func:`normalize_for_dedup`) and cut into shingles (character
   n-grams, or word n-grams from jieba). Texts whose normalised form is identical are collapsed
   first: they are duplicates with Jaccard 1.0 and would otherwise fill the LSH buckets.
2. A MinHash signature per distinct text goes into a ``datasketch.MinHashLSH`` index; every
   earlier text that shares a band with a new one becomes a candidate pair.
3. Each candidate pair is verified with the exact Jaccard similarity of the two shingle sets,
   so the result never depends on MinHash estimation error, only on which pairs were candidates.

Clusters are the connected components of the verified pairs.
"""

from __future__ import annotations

import logging
import unicodedata
import zlib
from collections.abc import Mapping, Sequence

import jieba
import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

TOKENIZERS = ("auto", "char", "word")
# Probability that a pair whose Jaccard equals the threshold becomes an LSH candidate.
_CANDIDATE_RECALL = 0.99
# Joins words inside a word shingle; a control character cannot survive normalisation, so two
# different word sequences never join to the same string.
_WORD_SEP = "\x00"


class _DropTable(dict):
    """``str.translate`` table deleting Unicode categories P*, S*, Z* and C*.

    Filled lazily: a complete table would need an entry per code point (over a million),
    while real text uses a few thousand distinct characters.
    """

    def __missing__(self, code: int) -> int | None:
        value = None if unicodedata.category(chr(code))[0] in "PSZC" else code
        self[code] = value
        return value


_DROP = _DropTable()


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def normalize_for_dedup(text: str) -> str:
    """Normalise a text so that formatting-only differences disappear.

    Applies NFKC (full-width letters, digits and punctuation become their half-width forms),
    lowercases, then drops every character in the Unicode categories P* (punctuation),
    S* (symbols), Z* (separators, i.e. whitespace) and C* (control and format characters).

    Args:
        text: Any text.

    Returns:
        The normalised text; "" when nothing but punctuation, symbols or whitespace remains.

    Example:
        >>> normalize_for_dedup("Ｈｅｌｌｏ， World!")
        'helloworld'
    """
    return _fold(text).translate(_DROP)


def exact_duplicate_groups(keys: list[str]) -> list[list[int]]:
    """Group the indices of identical keys.

    Args:
        keys: One key per record, e.g. ``normalize_for_dedup(text)``.

    Returns:
        Groups of at least two indices with identical keys, each sorted ascending, the groups
        ordered by their first index.
    """
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    # dicts keep insertion order, so groups already come ordered by first index
    return [g for g in groups.values() if len(g) > 1]


def near_duplicate_pairs(
    texts: list[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 3,
    tokenizer: str = "auto",
    seed: int = 1,
) -> list[tuple[int, int, float]]:
    """Find verified near-duplicate pairs.

    Texts with identical normalised form are reported as ``(first, other, 1.0)`` against the
    first index of their group rather than as every pair of the group (which would be
    quadratic); pairs between distinct normalised texts are reported between the first
    indices of their groups. Taken together the pairs connect exactly the clusters of
    :func:`near_duplicate_clusters`.

    Args:
        texts: The texts to compare.
        threshold: Minimum exact Jaccard similarity of two shingle sets, in (0, 1].
        num_perm: Number of MinHash permutations; more finds pairs near the threshold more
            reliably at a higher cost.
        ngram: Shingle size. ``"char"``/``"auto"``: characters per shingle. ``"word"``: jieba
            words per shingle is ``max(1, ngram - 1)``, because one word spans about two
            characters in Chinese and several in English, so ``ngram - 1`` words cover at least
            as much text as ``ngram`` characters while an edit still touches few shingles.
        tokenizer: ``"auto"`` (character n-grams; work for Chinese and English alike, no word
            segmentation needed), ``"char"`` or ``"word"`` (jieba words).
        seed: Seed of the MinHash permutations; the result is deterministic for a seed.

    Returns:
        ``(i, j, jaccard)`` with ``i < j`` and ``jaccard >= threshold``, sorted by ``(i, j)``.

    Raises:
        ValueError: If a parameter is out of range or the tokenizer is unknown.
    """
    _check_params(threshold, num_perm, ngram, tokenizer)
    norms = [normalize_for_dedup(t) for t in texts]
    groups = exact_duplicate_groups(norms)
    pairs = [(g[0], j, 1.0) for g in groups for j in g[1:]]
    repeated = {j for g in groups for j in g[1:]}
    reps = [i for i in range(len(texts)) if i not in repeated]
    if tokenizer == "word":
        units: Sequence | Mapping = {i: _words(texts[i]) for i in reps}
        size = max(1, ngram - 1)
    else:
        units, size = norms, ngram
    pairs += _verified_pairs(reps, units, size, threshold, num_perm, seed)
    pairs.sort()
    logger.debug("near-dedup: %d texts, %d distinct, %d verified pairs", len(texts), len(reps), len(pairs))
    return pairs


def near_duplicate_clusters(
    texts: list[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 3,
    tokenizer: str = "auto",
    seed: int = 1,
) -> list[list[int]]:
    """Cluster near-duplicate texts.

    Clusters are the connected components of the pairs from :func:`near_duplicate_pairs`
    (see there for the method and the arguments), so A and C share a cluster when A~B and
    B~C even if A and C alone fall below the threshold.

    Args:
        texts: The texts to compare.
        threshold: Minimum exact Jaccard similarity of two shingle sets, in (0, 1].
        num_perm: Number of MinHash permutations.
        ngram: Shingle size (characters, or ``max(1, ngram - 1)`` words for ``"word"``).
        tokenizer: ``"auto"``, ``"char"`` or ``"word"``.
        seed: Seed of the MinHash permutations.

    Returns:
        Clusters of at least two indices, each sorted ascending, ordered by their first index.

    Raises:
        ValueError: If a parameter is out of range or the tokenizer is unknown.
    """
    pairs = near_duplicate_pairs(texts, threshold, num_perm, ngram, tokenizer, seed)
    if not pairs:
        return []
    # scipy ships with datasketch (its LSH imports scipy), so use its connected components
    # instead of a hand-written union-find.
    rows, cols = np.array([[i, j] for i, j, _ in pairs]).T
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (rows, cols)), shape=(len(texts),) * 2)
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i in sorted({i for p in pairs for i in p[:2]}):
        members.setdefault(int(labels[i]), []).append(i)
    return sorted(members.values())


def _check_params(threshold: float, num_perm: int, ngram: int, tokenizer: str) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-dedup threshold must be in (0, 1], got {threshold}")
    if num_perm < 4:
        raise ValueError(f"near-dedup num_perm must be at least 4, got {num_perm}; 128 is a good default")
    if ngram < 1:
        raise ValueError(f"near-dedup ngram must be at least 1, got {ngram}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown near-dedup tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")


def _words(text: str) -> list[str]:
    # Segment before dropping whitespace and punctuation: for English the spaces are the word
    # boundaries. Each word is then normalised, so "".join(words) == normalize_for_dedup(text).
    return [w for w in (t.translate(_DROP) for t in jieba.lcut(_fold(text))) if w]


def _shingles(units: str | list[str], size: int) -> set[str]:
    """The shingle set: n-grams of ``size`` units, or the whole sequence when it is shorter."""
    if isinstance(units, str):  # characters: a slice already is the shingle
        if len(units) < size:
            return {units}
        return {units[i : i + size] for i in range(len(units) - size + 1)}
    if len(units) < size:
        return {_WORD_SEP.join(units)}
    return {_WORD_SEP.join(units[i : i + size]) for i in range(len(units) - size + 1)}


def _verified_pairs(
    reps: list[int], units: Sequence | Mapping, size: int, threshold: float, num_perm: int, seed: int
) -> list[tuple[int, int, float]]:
    """Query-then-insert every representative into MinHashLSH and verify the candidates."""
    lsh = MinHashLSH(num_perm=num_perm, params=_lsh_params(threshold, num_perm))
    pairs = []
    # zlib.crc32 instead of datasketch's default SHA1: deterministic too, and it halves the
    # MinHash time. A 32-bit non-cryptographic hash is enough because datasketch's affine32
    # scheme runs every input hash through the MurmurHash3 finalizer before permuting, and
    # candidates are verified exactly anyway.
    shingles = ([s.encode("utf-8") for s in _shingles(units[i], size)] for i in reps)
    sketches = MinHash.generator(shingles, num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
    # Plain insert, not insertion_session: each text is queried against the earlier ones just
    # before it goes in, so every candidate pair comes up exactly once; with the in-memory dict
    # storage the session's buffering would save nothing.
    for i, sketch in zip(reps, sketches, strict=True):
        candidates = lsh.query(sketch)
        if candidates:
            pairs += _verify(i, sorted(candidates), units, size, threshold)
        lsh.insert(i, sketch, check_duplication=False)
    return pairs


def _verify(
    i: int, candidates: list[int], units: Sequence | Mapping, size: int, threshold: float
) -> list[tuple[int, int, float]]:
    # Shingle sets are rebuilt per comparison instead of cached: a cache holds ~10 kB per text
    # and would outgrow the LSH index itself, while rebuilding costs microseconds.
    mine = _shingles(units[i], size)
    verified = []
    for j in candidates:
        theirs = _shingles(units[j], size)
        jaccard = len(mine & theirs) / len(mine | theirs)
        if jaccard >= threshold:
            verified.append((j, i, jaccard))
    return verified


def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands ``b`` and rows ``r`` that make a pair at the threshold a candidate 99% of the time.

    datasketch's own choice balances false positives against false negatives and, at
    threshold 0.8 with 128 permutations, gives (9, 13): a pair with Jaccard exactly 0.8 is a
    candidate only 40% of the time. Every candidate is verified exactly here, so a false
    positive costs only one set comparison; take the most rows (fewest spurious candidates)
    that still reach the recall target.
    """
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _CANDIDATE_RECALL:
            return bands, rows
    return num_perm, 1
