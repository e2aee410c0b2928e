"""Guards against Whisper's known hallucinations on silence and noise. Pure functions.

Whisper, given non-speech, tends to produce confident filler ("Thank you.", "you",
"Thanks for watching!") or nothing but punctuation. We drop a segment when Whisper itself
thinks there was no speech (its own rule: high no-speech probability and low average log
probability), and drop a whole transcript that is only filler when it was also unsure.
"""

from __future__ import annotations

import re

from media.asr.base import Transcription

# Both Whisper libraries' defaults for their no-speech rule (see heard_no_speech).
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


def heard_no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's own rule, as its ``transcribe`` applies it to a 30 s window: <|nospeech|>
    likely and the decoded text unlikely (a text exactly at the log-probability limit is
    not trusted either). The engines drop such a window; :func:`clean_transcript` drops
    such a segment from a server that kept it."""
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob <= LOGPROB_THRESHOLD


def clean_transcript(transcription: Transcription) -> str:
    """The text worth sending, or ``""`` when it is not speech."""
    kept = [
        s
        for s in transcription.segments
        if not heard_no_speech(s.no_speech_prob, s.avg_logprob)
        and _normalise(s.text)
        and not _ANNOTATIONS.fullmatch(s.text)
    ]
    text = " ".join(s.text.strip() for s in kept)
    words = _normalise(text)
    if not words:
        return ""
    if words in _FILLER and max(s.avg_logprob for s in kept) < _FILLER_MAX_LOGPROB:
        return ""
    return text
