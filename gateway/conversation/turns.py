"""Turns from endpointer events: when a turn starts, when ASR may start early, when a turn
ends and whether the early result stands. Pure: events in, actions out, no tasks, no clock.

Early ASR: when speech pauses (``SpeechPaused``, 200 ms into the hangover) the utterance so
far is transcribed at once: always when the turn's end is decided from that transcript
(``early_always``), else only when the recogniser is idle. When the end is decided, and the
recogniser is idle, transcription starts sooner still, as the voice drops
(``SpeechDipped``): if that silence lasts to the pause, the pause has its transcript ~200 ms
earlier. If the silence becomes the end, with no speech in between, that result is used;
if the person goes on (``SpeechResumed``), it is discarded, or, begun at a dip, becomes a
live caption. At most one early transcription per session at a time. ``PauseReached`` asks
for the judgement on whether the turn is over.

Partial captions: while speech goes on (``SpeechProgress``), the utterance so far is offered
for a partial transcript when the recogniser is idle and no dip has been transcribed since
the last offer; never otherwise, so that captions cost nobody's final any time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from media import Float32Array
from media.endpointer import (
    EndpointerEvent,
    EndReason,
    SpeechDipped,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
)


@dataclass(frozen=True)
class TurnStarted:
    utterance_id: str


@dataclass(frozen=True)
class StartEarlyASR:
    audio: Float32Array


@dataclass(frozen=True)
class DiscardEarlyASR:
    caption: bool = False  # begun at a dip: its transcript still makes a live caption


@dataclass(frozen=True)
class PauseReached:
    """Speech has paused long enough to judge whether the turn is over."""

    audio: Float32Array


@dataclass(frozen=True)
class StartPartialASR:
    utterance_id: str
    audio: Float32Array


@dataclass(frozen=True)
class TurnEnded:
    utterance_id: str
    audio: Float32Array
    speech_samples: int
    end_sample: int  # stream position where the VAD's silence began
    voiced_end_sample: int  # where the voice itself faded: "end of speech"
    use_early: bool  # the early transcription covers exactly this utterance
    reason: EndReason = "silence"


TurnAction = (
    TurnStarted | StartEarlyASR | DiscardEarlyASR | PauseReached | StartPartialASR | TurnEnded
)


class TurnTracker:
    def __init__(self, *, early_always: bool = False) -> None:
        self._ids = itertools.count(1)
        self._current: str | None = None
        self._early: tuple[int, int] | None = None  # the span being transcribed early
        self._early_at_dip = False  # that transcription began as the voice dropped
        self._dip_since_progress = False  # a dip was transcribed since the last progress
        self._early_always = early_always

    @property
    def current(self) -> str | None:
        """The turn in progress, between TurnStarted and TurnEnded."""
        return self._current

    def on_event(
        self, event: EndpointerEvent, *, recogniser_idle: bool, turns_idle: bool | None = None
    ) -> list[TurnAction]:
        """``recogniser_idle``: nothing is queued or running in ASR (what captions need);
        ``turns_idle``: no final or early transcription is (what early ASR needs; captions
        may be running, and yield to it). Unless given, the same as ``recogniser_idle``."""
        if turns_idle is None:
            turns_idle = recogniser_idle
        actions: list[TurnAction] = []
        if isinstance(event, SpeechStarted):
            actions += self._discard()
            self._current = f"u{next(self._ids)}"
            actions.append(TurnStarted(self._current))
            return actions
        if isinstance(event, SpeechProgress):
            dipped, self._dip_since_progress = self._dip_since_progress, False
            if recogniser_idle and self._current is not None and not dipped:
                actions.append(StartPartialASR(self._current, event.audio))
            return actions
        if isinstance(event, SpeechDipped):
            if (
                self._early_always
                and recogniser_idle
                and self._current is not None
                and self._early is None
            ):
                self._early = (event.start_sample, event.end_sample)
                self._early_at_dip = self._dip_since_progress = True
                actions.append(StartEarlyASR(event.audio))
            return actions
        if isinstance(event, SpeechResumed):
            return self._discard()  # the silence was not the end
        if isinstance(event, SpeechPaused):
            if self._early == (event.start_sample, event.end_sample):
                return [PauseReached(event.audio)]  # transcribing since the dip
            actions += self._discard()  # the person spoke again after an earlier pause
            if turns_idle or self._early_always:
                self._early = (event.start_sample, event.end_sample)
                self._early_at_dip = False
                actions.append(StartEarlyASR(event.audio))
            if self._early_always:  # the turn's end is judged here
                actions.append(PauseReached(event.audio))
            return actions
        use_early = self._early == (event.start_sample, event.end_sample)
        if self._early is not None and not use_early:
            actions.append(DiscardEarlyASR())
        self._early = None
        utterance_id = self._current or f"u{next(self._ids)}"
        self._current = None
        actions.append(
            TurnEnded(
                utterance_id,
                event.audio,
                event.speech_samples,
                event.end_sample,
                event.end_sample if event.voiced_end_sample is None else event.voiced_end_sample,
                use_early,
                event.reason,
            )
        )
        return actions

    def _discard(self) -> list[TurnAction]:
        if self._early is None:
            return []
        self._early = None
        return [DiscardEarlyASR(caption=self._early_at_dip)]
