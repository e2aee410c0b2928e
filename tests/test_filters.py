"""Whisper hallucination guards (``media/asr/filters.py``) on hand-made transcriptions."""

from __future__ import annotations

import time

import pytest

from media.asr.base import Segment, Transcription
from media.asr.filters import clean_transcript

CONFIDENT = -0.2  # avg_logprob of clear speech
UNSURE = -0.8  # below the filler limit (-0.4), above Whisper's no-speech limit (-1.0)


def seg(text: str, avg_logprob: float = CONFIDENT, no_speech_prob: float = 0.05) -> Segment:
    return Segment(text=text, avg_logprob=avg_logprob, no_speech_prob=no_speech_prob)


def clean(*segments: Segment) -> str:
    return clean_transcript(Transcription(segments=segments))


# --- speech is kept ---


def test_normal_text_is_kept_stripped() -> None:
    assert clean(seg(" What is the weather like in Paris today?")) == (
        "What is the weather like in Paris today?"
    )


def test_segments_are_joined_with_one_space() -> None:
    assert clean(seg(" Please remind me"), seg("  to call my mother. ")) == (
        "Please remind me to call my mother."
    )


def test_empty_and_blank_segments_are_skipped() -> None:
    assert clean(seg(""), seg("  "), seg(" Turn off the lights.")) == "Turn off the lights."


def test_unsure_speech_that_is_not_filler_is_kept() -> None:
    assert clean(seg(" Thank you for the help.", UNSURE)) == "Thank you for the help."
    assert clean(seg(" Thank you. Thank you.", UNSURE)) == "Thank you. Thank you."


def test_nothing_is_nothing() -> None:
    assert clean() == ""


# --- Whisper's own no-speech rule ---


def test_no_speech_segment_is_dropped() -> None:
    assert clean(seg(" Thank you.", -1.5, 0.9)) == ""
    assert clean(seg(" Hello.", -1.2, 0.7), seg(" Turn off the lights.")) == (
        "Turn off the lights."
    )


@pytest.mark.parametrize(
    ("avg_logprob", "no_speech_prob", "kept"),
    [
        (-1.01, 0.61, False),  # both over the line
        (-1.0, 0.61, False),  # logprob exactly at the limit: dropped, as Whisper does
        (-0.99, 0.61, True),  # just above the limit: the words are trusted
        (-1.01, 0.6, True),  # no-speech exactly at the limit: not above it
        (-0.2, 0.99, True),  # sure of the words, whatever the no-speech estimate
        (-3.0, 0.1, True),  # unsure of the words, but there was speech
    ],
)
def test_no_speech_needs_both_conditions(
    avg_logprob: float, no_speech_prob: float, kept: bool
) -> None:
    text = " Open the garage door."
    assert clean(seg(text, avg_logprob, no_speech_prob)) == (text.strip() if kept else "")


# --- filler ---


@pytest.mark.parametrize(
    "text",
    [" Thank you.", " you", " You", " Thanks for watching!", " Bye.", " Okay.", " Um...", " I"],
)
def test_unsure_filler_is_dropped_and_confident_filler_kept(text: str) -> None:
    assert clean(seg(text, UNSURE)) == ""
    assert clean(seg(text, CONFIDENT)) == text.strip()


def test_filler_limit_is_strict() -> None:
    assert clean(seg(" Thank you.", -0.4)) == "Thank you."
    assert clean(seg(" Thank you.", -0.41)) == ""


def test_filler_split_over_segments_is_judged_whole() -> None:
    assert clean(seg(" Thank", UNSURE), seg(" you.", UNSURE)) == ""
    # One confident segment is enough to trust it.
    assert clean(seg(" Thank", UNSURE), seg(" you.", CONFIDENT)) == "Thank you."


def test_filler_confidence_ignores_dropped_segments() -> None:
    confident_but_empty = seg(" ...", CONFIDENT)
    assert clean(confident_but_empty, seg(" Thank you.", UNSURE)) == ""


# --- annotations and punctuation ---


@pytest.mark.parametrize(
    "text",
    [
        " [BLANK_AUDIO]",
        "[Music]",
        " (upbeat music)",
        " ♪",
        " ♪♪ ♪",
        " *",
        " [Music] [Music]",
        " (wind blowing) [BLANK_AUDIO]",
    ],
)
def test_annotations_are_dropped_even_when_confident(text: str) -> None:
    assert clean(seg(text, CONFIDENT)) == ""


@pytest.mark.parametrize("text", [" .", " ...", " ?!", " -", " —", " , ,", " '"])
def test_punctuation_only_is_dropped(text: str) -> None:
    assert clean(seg(text, CONFIDENT)) == ""


def test_annotation_segments_are_dropped_around_speech() -> None:
    assert clean(seg(" [Music]"), seg(" [Music]")) == ""
    assert clean(seg(" (upbeat music)"), seg(" Hello there."), seg(" ♪")) == "Hello there."
    # With the annotation gone, what is left is unsure filler.
    assert clean(seg(" [BLANK_AUDIO]", UNSURE), seg(" Thank you.", UNSURE)) == ""


def test_words_around_an_annotation_are_kept() -> None:
    assert clean(seg(" ♪ Happy birthday to you ♪")) == "♪ Happy birthday to you ♪"
    assert clean(seg(" I said [inaudible] yesterday.")) == "I said [inaudible] yesterday."


def test_annotation_check_is_linear_on_long_runs() -> None:
    started = time.perf_counter()
    assert clean(seg(" " + "♪" * 5000 + " hi")) == "♪" * 5000 + " hi"
    assert clean(seg(" " + "[a] " * 2000 + "b")) == "[a] " * 2000 + "b"
    assert time.perf_counter() - started < 0.5
