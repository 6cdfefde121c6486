"""Per-text checks shared by `data inspect` and `data clean`: loops, control characters,
mojibake and mixed scripts."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Scripts are told apart by the first word of the Unicode character name; a hand-written table
# because the stdlib has no script property and the check needs only letters' broad families.
_SCRIPT_WORDS = {
    "CJK": "Han",
    "LATIN": "Latin",
    "CYRILLIC": "Cyrillic",
    "GREEK": "Greek",
    "ARABIC": "Arabic",
    "HEBREW": "Hebrew",
    "HANGUL": "Hangul",
    "HIRAGANA": "Kana",
    "KATAKANA": "Kana",
    "THAI": "Thai",
    "DEVANAGARI": "Devanagari",
}


def looping_phrase(text: str, n: int = 4, min_count: int = 3) -> str | None:
    """A substring of ``n`` characters (not only punctuation/space) occurring ``min_count`` times or
    more without overlap, or None. Any repeated phrase of n+ characters is caught, since its
    first n characters repeat too."""
    seen: set[str] = set()
    for i in range(len(text) - n + 1):
        gram = text[i : i + n]
        if gram in seen:
            continue
        seen.add(gram)
        if all(unicodedata.category(c)[0] in "PZSC" for c in gram):
            continue
        if text.count(gram) >= min_count:
            return gram
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogates(text: str) -> int:
    """How many lone UTF-16 surrogates ``text`` holds (half an emoji, cut by some tool).

    A JSON ``"\\ud83d\\ude00"`` pair decodes to one character; a surrogate left in a Python string
    is always unpaired, and cannot be written as UTF-8.
    """
    return len(_SURROGATE.findall(text))


def fix_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the replacement character)."""
    return _SURROGATE.sub("\ufffd", text)


def control_chars(text: str) -> list[str]:
    """Control and invisible format characters other than newline, tab and carriage return."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t\r"]


def strip_control(text: str) -> str:
    """``text`` without the characters ``control_chars`` reports."""
    return "".join(c for c in text if c in "\n\t\r" or unicodedata.category(c) not in ("Cc", "Cf"))


def is_mojibake(text: str) -> bool:
    """True if ftfy finds text that was decoded with the wrong encoding (e.g. 'ç”„å¬›')."""
    import ftfy

    return ftfy.is_bad(text)


def scripts(text: str) -> set[str]:
    """The writing systems of the letters in ``text`` (Han, Latin, Cyrillic, ...)."""
    found = set()
    for c in text:
        if c.isalpha():
            words = unicodedata.name(c, "").split()  # e.g. FULLWIDTH LATIN CAPITAL LETTER A
            found.add(
                next(
                    (_SCRIPT_WORDS[w] for w in words if w in _SCRIPT_WORDS),
                    words[0].title() if words else "Other",
                )
            )
    return found


# Latin next to Han (names, "OK", English terms) and Kana next to Han (Japanese) are normal.
NORMAL_MIXES = [{"Han", "Latin"}, {"Han", "Kana"}, {"Han", "Kana", "Latin"}]


def unusual_mix(text: str) -> frozenset[str] | None:
    """The set of scripts if ``text`` mixes scripts in an unusual way, else None."""
    s = scripts(text)
    if len(s) < 2 or s in NORMAL_MIXES:
        return None
    return frozenset(s)


def top(counter: Counter, k: int = 5) -> list[list]:
    return [[key, n] for key, n in counter.most_common(k)]
