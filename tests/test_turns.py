"""The turn state machine: endpointer events in, actions out, exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.conversation.turns import (
    DiscardEarlyASR,
    StartEarlyASR,
    StartPartialASR,
    TurnEnded,
    TurnStarted,
    TurnTracker,
)
from media.endpointer import (
    SpeechDipped,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
)

AUDIO = np.zeros(160, dtype=np.float32)


def paused(start: int, end: int) -> SpeechPaused:
    return SpeechPaused(AUDIO, start, end)


def ended(start: int, end: int) -> SpeechEnded:
    return SpeechEnded(AUDIO, start, end, "silence")


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_turn_starts_and_ends_with_one_id() -> None:
    turns = TurnTracker()
    started = turns.on_event(SpeechStarted(100), recogniser_idle=True)
    assert started == [TurnStarted("u1")]
    (end,) = turns.on_event(ended(100, 900), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert (end.utterance_id, end.speech_samples, end.end_sample, end.use_early) == (
        "u1",
        800,
        900,
        False,
    )
    assert turns.on_event(SpeechStarted(2000), recogniser_idle=True) == [TurnStarted("u2")]


def test_a_pause_that_becomes_the_end_uses_the_early_asr() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    assert kinds(turns.on_event(paused(0, 800), recogniser_idle=True)) == ["StartEarlyASR"]
    (end,) = turns.on_event(ended(0, 800), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert end.use_early


def test_speech_after_a_pause_discards_the_early_asr() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(paused(0, 800), recogniser_idle=True)
    # The person goes on: the next pause replaces the first early run.
    assert kinds(turns.on_event(paused(0, 1600), recogniser_idle=True)) == [
        "DiscardEarlyASR",
        "StartEarlyASR",
    ]
    (end,) = turns.on_event(ended(0, 1600), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert end.use_early


def test_an_end_elsewhere_than_the_pause_discards_the_early_asr() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(paused(0, 800), recogniser_idle=True)
    actions = turns.on_event(ended(0, 1200), recogniser_idle=True)
    assert kinds(actions) == ["DiscardEarlyASR", "TurnEnded"]
    assert isinstance(actions[1], TurnEnded)
    assert not actions[1].use_early


def test_a_busy_recogniser_gets_no_early_work() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    assert turns.on_event(paused(0, 800), recogniser_idle=False) == []
    (end,) = turns.on_event(ended(0, 800), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert not end.use_early


def test_a_new_turn_discards_an_early_run_left_over() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(paused(0, 800), recogniser_idle=True)
    assert turns.on_event(SpeechStarted(900), recogniser_idle=True) == [
        DiscardEarlyASR(),
        TurnStarted("u2"),
    ]


def test_an_end_without_a_start_still_gets_an_id() -> None:
    # A flush at the end of a track can end speech the tracker never saw start.
    turns = TurnTracker()
    (end,) = turns.on_event(ended(0, 800), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert end.utterance_id == "u1"


def test_start_early_asr_carries_the_audio_so_far() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    (start,) = turns.on_event(paused(0, 800), recogniser_idle=True)
    assert isinstance(start, StartEarlyASR)
    assert start.audio is AUDIO


def test_resumed_speech_discards_the_early_transcription() -> None:
    turns = TurnTracker()
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    assert kinds(turns.on_event(paused(0, 500), recogniser_idle=True)) == ["StartEarlyASR"]
    assert turns.on_event(SpeechResumed(0), recogniser_idle=True) == [DiscardEarlyASR()]
    assert turns.on_event(SpeechResumed(0), recogniser_idle=True) == []  # nothing left
    (end,) = turns.on_event(ended(0, 900), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert not end.use_early


def test_early_always_transcribes_at_a_pause_even_when_busy() -> None:
    assert TurnTracker().on_event(paused(0, 500), recogniser_idle=False) == []
    always = TurnTracker(early_always=True)
    assert kinds(always.on_event(paused(0, 500), recogniser_idle=False)) == [
        "StartEarlyASR",
        "PauseReached",  # and judges the turn there
    ]


def test_progress_asks_for_a_partial_only_when_idle_and_in_a_turn() -> None:
    turns = TurnTracker()
    progress = SpeechProgress(AUDIO, 0, 800)
    assert turns.on_event(progress, recogniser_idle=True) == []  # no turn yet
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    assert turns.on_event(progress, recogniser_idle=False) == []
    (partial,) = turns.on_event(progress, recogniser_idle=True)
    assert isinstance(partial, StartPartialASR)
    assert partial.utterance_id == "u1"


def test_a_decided_end_says_so() -> None:
    turns = TurnTracker(early_always=True)
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(paused(0, 500), recogniser_idle=False)
    (end,) = turns.on_event(SpeechEnded(AUDIO, 0, 500, "decided"), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert end.use_early
    assert end.reason == "decided"


def dipped(start: int, end: int) -> SpeechDipped:
    return SpeechDipped(AUDIO, start, end)


def test_a_dip_starts_the_transcript_that_its_pause_then_judges() -> None:
    turns = TurnTracker(early_always=True)
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    assert kinds(turns.on_event(dipped(0, 500), recogniser_idle=True)) == ["StartEarlyASR"]
    # The silence lasts: no second transcription, only the judgement.
    assert kinds(turns.on_event(paused(0, 500), recogniser_idle=False)) == ["PauseReached"]
    (end,) = turns.on_event(ended(0, 500), recogniser_idle=True)
    assert isinstance(end, TurnEnded)
    assert end.use_early


def test_speech_after_a_dip_makes_its_transcript_a_caption() -> None:
    turns = TurnTracker(early_always=True)
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(dipped(0, 500), recogniser_idle=True)
    assert turns.on_event(SpeechResumed(0), recogniser_idle=False) == [
        DiscardEarlyASR(caption=True)
    ]
    # The progress offer right after is skipped: the dip's transcript is its caption.
    assert turns.on_event(SpeechProgress(AUDIO, 0, 900), recogniser_idle=True) == []
    assert kinds(turns.on_event(SpeechProgress(AUDIO, 0, 1300), recogniser_idle=True)) == [
        "StartPartialASR"
    ]


def test_no_dip_transcription_when_busy_or_without_judging() -> None:
    busy = TurnTracker(early_always=True)
    busy.on_event(SpeechStarted(0), recogniser_idle=True)
    assert busy.on_event(dipped(0, 500), recogniser_idle=False) == []
    fixed = TurnTracker()
    fixed.on_event(SpeechStarted(0), recogniser_idle=True)
    assert fixed.on_event(dipped(0, 500), recogniser_idle=True) == []
    # A pause with a different span than the dip's: a new transcription.
    turns = TurnTracker(early_always=True)
    turns.on_event(SpeechStarted(0), recogniser_idle=True)
    turns.on_event(dipped(0, 400), recogniser_idle=True)
    assert kinds(turns.on_event(paused(0, 500), recogniser_idle=True)) == [
        "DiscardEarlyASR",
        "StartEarlyASR",
        "PauseReached",
    ]
