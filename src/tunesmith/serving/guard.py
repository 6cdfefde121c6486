"""Turn a growing answer into what a client may be sent: stop strings and the repetition guard.

Both backends feed the decoded answer so far into a ``TextTracker`` after every token, so stop
strings, the repetition guard and held-back partial characters behave the same on every engine.
Written by hand: no library does streaming-safe stop strings plus loop detection over text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass
class Loop:
    """A phrase repeated back to back at the end of an answer."""

    phrase: str
    cut: int  # end of the phrase's first copy: the answer is kept up to here


class RepetitionGuard:
    """Notices an answer that has started looping: its tail is one phrase repeated back to back.

    Like ``tunesmith.data.textcheck.looping_phrase`` it ignores phrases made only of punctuation,
    spaces and symbols (a row of dashes is not a loop), but it looks only at consecutive copies at
    the end of the text, so a phrase used three times in a long answer does not trip it.

    Args:
        min_repeats: copies of the phrase in a row that count as a loop.
        min_chars: the repeated stretch must also be at least this long (so "哈哈哈" passes).
        max_phrase: longest phrase, in characters, looked for.
    """

    def __init__(self, min_repeats: int = 3, min_chars: int = 24, max_phrase: int = 200):
        self.min_repeats = min_repeats
        self.min_chars = min_chars
        self.max_phrase = max_phrase

    def check(self, text: str) -> Loop | None:
        """The loop at the end of ``text``, or None. The shortest repeating phrase wins."""
        n = len(text)
        for size in range(1, min(self.max_phrase, n // self.min_repeats) + 1):
            span = max(self.min_repeats * size, self.min_chars)
            if span > n:
                continue
            tail = text[n - span :]
            if tail[size:] != tail[:-size]:  # periodic with period `size` over the whole span
                continue
            start = n - span
            while start > 0 and text[start - 1] == text[start - 1 + size]:
                start -= 1
            if all(unicodedata.category(c)[0] in "PZSC" for c in text[start : start + size]):
                continue
            cut = _cut_after_punctuation(text, start, size)
            return Loop(text[cut - size : cut], cut)
        return None


def _cut_after_punctuation(text: str, start: int, size: int) -> int:
    """Where to end the first copy of a loop that starts at ``start``: a periodic stretch has
    ``size`` equally valid phrase boundaries, so prefer one right after punctuation or a space
    ("…知道了。|本宫…" rather than "…知道了|。本宫…")."""
    for cut in range(start + size, start + 2 * size):
        if unicodedata.category(text[cut - 1])[0] in "PZ":
            return cut
    return start + size


class TextTracker:
    """Follows one answer as it grows and says what may be released to the client.

    A streaming client gets text as soon as it is safe: a trailing partial UTF-8 character
    (decoded as U+FFFD) and any tail that could still become a stop string are held back. A
    non-streaming client gets everything at once, so a loop can be cut after its first copy.

    Args:
        stop: stop strings; the answer ends before the first one and never contains it.
        guard: the repetition guard, or None.
        stream: release text piece by piece (True) or only at the end (False).
    """

    def __init__(self, stop: list[str], guard: RepetitionGuard | None = None, stream: bool = True):
        self.stop = [s for s in stop if s]
        self.guard = guard
        self.stream = stream
        self.text = ""
        self.sent = 0
        self.finish: str | None = None
        self.loop: Loop | None = None

    def update(self, text: str) -> str:
        """Take the answer so far; return the newly releasable piece (may be empty)."""
        if self.finish:
            return ""
        hit = self._first_stop(text)
        if hit is not None:
            return self._end(text[:hit], "stop")
        if self.guard is not None:
            loop = self.guard.check(text)
            if loop is not None:
                self.loop = loop
                return self._end(text[: max(loop.cut, self.sent)], "repetition")
        self.text = text
        if not self.stream:
            return ""
        safe = len(text.rstrip("\ufffd"))
        return self._release(safe - self._stop_prefix(text[:safe]))

    def close(self, reason: str) -> str:
        """Generation ended for ``reason`` ("stop": end token, "length": token limit); flush the rest."""
        if self.finish:
            return ""
        return self._end(self.text.rstrip("\ufffd"), reason)

    def _end(self, text: str, reason: str) -> str:
        self.text = text
        self.finish = reason
        return self._release(len(text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that a stop string starts with."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
