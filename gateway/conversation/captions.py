"""Live captions that do not flicker: the words of the interim hypotheses that two
consecutive hypotheses agree on, from the start, are committed and never change again (the
LocalAgreement-2 policy of whisper_streaming). Pure: hypotheses in, captions out.

Words are compared without case or punctuation ("Paris," and "paris" agree); the committed
words keep the spelling they were first committed with. A later hypothesis that disagrees
inside the committed prefix does not shrink it: the caption is the committed words followed
by that hypothesis's words after the committed count. The final transcript of an utterance
replaces its caption; :meth:`CaptionStabiliser.reset` starts the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NOT_WORD = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class Caption:
    text: str  # words separated by single spaces
    # How many leading characters of ``text`` will not change: always on a word boundary,
    # 0 <= stable_chars <= len(text).
    stable_chars: int


class CaptionStabiliser:
    def __init__(self) -> None:
        self._committed: list[str] = []  # as first committed
        self._previous: list[str] = []  # the last hypothesis's comparison keys

    def update(self, hypothesis: str) -> Caption:
        words = hypothesis.split()
        keys = [_key(word) for word in words]
        agreed = _common_prefix(self._previous, keys)
        self._previous = keys
        if agreed > len(self._committed):
            self._committed += words[len(self._committed) : agreed]
        stable = " ".join(self._committed)
        return Caption(" ".join(self._committed + words[len(self._committed) :]), len(stable))

    def reset(self) -> None:
        """Forget the utterance: the next hypothesis starts a new caption."""
        self._committed = []
        self._previous = []


def _key(word: str) -> str:
    """A word as compared: case-folded, without punctuation ("Paris," -> "paris")."""
    return _NOT_WORD.sub("", word.casefold())


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
