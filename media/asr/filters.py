"""Guards against Whisper's known hallucinations on silence and noise. Pure functions.

Whisper, given non-speech, tends to produce confident filler ("Thank you.", "you",
"Thanks for watching!") or nothing but punctuation. We drop a segment when Whisper itself
thinks there was no speech (its own rule: high no-speech probability and low average log
probability), and drop a whole transcript that is only filler when it was also unsure.
"""

from __future__ import annotations

import re

from media.asr.base import Segment, Transcription

NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
# Filler that Whisper emits on near-silence: trusted only when the model was confident.
_FILLER = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "bye",
        "okay",
        "oh",
        "uh",
        "um",
        "hmm",
        "mm",
        "so",
        "the",
        "i",
    }
)
_FILLER_MAX_LOGPROB = -0.4
_NON_WORD = re.compile(r"[^\w']+")
# Whisper's sound annotations: "[BLANK_AUDIO]", "(music)", "♪♪", one or several in a row.
_ANNOTATIONS = re.compile(r"(?:\s*(?:\[[^\]]*\]|\([^)]*\)|[*♪]))+\s*")  # one unit a turn


def _normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip(" '")  # an apostrophe alone is no word


def _is_no_speech(segment: Segment) -> bool:
    return segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOGPROB_THRESHOLD


def clean_transcript(transcription: Transcription) -> str:
    """The text worth sending, or ``""`` when it is not speech."""
    kept = [
        s
        for s in transcription.segments
        if not _is_no_speech(s) and _normalise(s.text) and not _ANNOTATIONS.fullmatch(s.text)
    ]
    text = " ".join(s.text.strip() for s in kept)
    words = _normalise(text)
    if not words:
        return ""
    if words in _FILLER and max(s.avg_logprob for s in kept) < _FILLER_MAX_LOGPROB:
        return ""
    return text
