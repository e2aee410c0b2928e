"""A streamed reply → pieces worth speaking. Pure: deltas in, clean text pieces out.

A voice should start after a few words, not a whole answer, and should not read markup
aloud. The first piece is cut at the first clause boundary (``,;:`` or a sentence end)
once it holds ``first_min_words`` words, or after ``first_max_words`` words at a space
when no boundary comes (each word waited for and synthesised is time before the voice
starts; the rest is synthesised while the first piece plays); later pieces are whole
sentences (or lines), and anything longer than ``max_chars`` is cut at a space. Fenced
code blocks are skipped whole; inline code, URLs, emoji, list markers, headings and
emphasis are stripped, and a link keeps its text.
"""

from __future__ import annotations

import re

_FENCE = "```"
# A sentence ends at punctuation followed by a space (so "3.5" does not), or at a line
# end; "1." that starts a line is a list marker, not an end.
_SENTENCE_END = re.compile(r"(?<!^\d)(?<!^\d\d)[.!?…](?=[\s\"')\]]*\s)|\n", re.MULTILINE)
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_INLINE_CODE = re.compile(r"`[^`]*`")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.MULTILINE)
_HEADING = re.compile(r"^\s*#{1,6}\s*", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~)")
_QUOTE = re.compile(r"^\s*>\s?", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*\|?[\s:|-]+\|[\s:|-]*$", re.MULTILINE)
# Pictographs, dingbats, flags and their joiners/selectors: not words a voice can say.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f1e6-\U0001f1ff"
    "\u200d\ufe0e\ufe0f\u2b00-\u2bff]"
)
_SPACES = re.compile(r"\s+")


def speakable(text: str) -> str:
    """What of ``text`` a voice should say (no fenced code: the caller removes it)."""
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _INLINE_CODE.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _LIST_MARKER.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _EMOJI.sub("", text)
    text = text.replace("|", " ")
    text = _SPACES.sub(" ", text).strip()
    return text if any(c.isalnum() for c in text) else ""


class SpeechSplitter:
    def __init__(
        self, *, first_min_words: int = 2, first_max_words: int = 4, max_chars: int = 250
    ) -> None:
        if not 1 <= first_min_words <= first_max_words or max_chars < 20:
            raise ValueError("need 1 <= first_min_words <= first_max_words and max_chars >= 20")
        self._first_min_words = first_min_words
        self._first_max_words = first_max_words
        self._max_chars = max_chars
        self._pending = ""  # raw text not yet cut into a piece
        self._spoken_any = False

    def push(self, delta: str) -> list[str]:
        """Add the next piece of the reply; returns the pieces now ready to speak."""
        self._pending += delta
        pieces: list[str] = []
        while (cut := self._next_cut()) is not None:
            pieces += self._emit(self._pending[:cut])
            self._pending = self._pending[cut:]
        return pieces

    def flush(self) -> list[str]:
        """The reply is complete: whatever is left, unless it is unfinished code."""
        rest, self._pending = self._pending, ""
        return self._emit(rest)

    def _next_cut(self) -> int | None:
        text = self._pending
        fence = text.find(_FENCE)
        if fence == 0:  # a code block: skip it whole once it closes
            close = text.find(_FENCE, len(_FENCE))
            return None if close < 0 else close + len(_FENCE)
        # Never cut inside a fence, nor inside what may be the start of one ("`" or "``").
        region = text[:fence] if fence > 0 else text[: len(text.rstrip("`"))]
        if not self._spoken_any:  # the earliest of: a clause, a sentence, enough words
            cuts = [
                clause.end()
                for clause in _CLAUSE_END.finditer(region)
                if len(region[: clause.end()].split()) >= self._first_min_words
            ][:1]
            if (sentence := _SENTENCE_END.search(region)) is not None:
                cuts.append(sentence.end())
            if (enough := _after_words(region, self._first_max_words)) is not None:
                cuts.append(enough)
            if cuts:
                return min(cuts)
        sentence = _SENTENCE_END.search(region)
        if sentence is not None:
            return sentence.end()
        if len(region) > self._max_chars:
            space = region.rfind(" ", 0, self._max_chars)
            return space + 1 if space > 0 else self._max_chars
        return fence if fence > 0 else None  # what precedes a code block is a piece

    def _emit(self, raw: str) -> list[str]:
        if raw.startswith(_FENCE):
            return []
        piece = speakable(raw)
        if not piece:
            return []
        self._spoken_any = True
        return [piece]


def _after_words(text: str, count: int) -> int | None:
    """The position just after the space that ends the ``count``-th word, once the text
    goes on past it (a word still arriving is not cut)."""
    for index, match in enumerate(re.finditer(r"\S+\s", text), start=1):
        if index == count:
            return match.end()
    return None
