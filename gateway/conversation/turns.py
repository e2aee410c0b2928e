"""Turns from endpointer events: when a turn starts, when ASR may start early, when a turn
ends and whether the early result stands. Pure: events in, actions out, no tasks, no clock.

Early ASR: when speech pauses (``SpeechPaused``, 200 ms into the hangover) and the
recogniser is idle, the utterance so far may be transcribed at once. If the pause becomes
the end, with no speech in between, that result is used; if the person goes on, it is
discarded. At most one early transcription per session at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from media import Float32Array
from media.endpointer import EndpointerEvent, SpeechPaused, SpeechStarted


@dataclass(frozen=True)
class TurnStarted:
    utterance_id: str


@dataclass(frozen=True)
class StartEarlyASR:
    audio: Float32Array


@dataclass(frozen=True)
class DiscardEarlyASR:
    pass


@dataclass(frozen=True)
class TurnEnded:
    utterance_id: str
    audio: Float32Array
    speech_samples: int
    end_sample: int  # stream position where the VAD's silence began
    voiced_end_sample: int  # where the voice itself faded: "end of speech"
    use_early: bool  # the early transcription covers exactly this utterance


TurnAction = TurnStarted | StartEarlyASR | DiscardEarlyASR | TurnEnded


class TurnTracker:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._current: str | None = None
        self._early: tuple[int, int] | None = None  # the span being transcribed early

    def on_event(self, event: EndpointerEvent, *, recogniser_idle: bool) -> list[TurnAction]:
        actions: list[TurnAction] = []
        if isinstance(event, SpeechStarted):
            actions += self._discard()
            self._current = f"u{next(self._ids)}"
            actions.append(TurnStarted(self._current))
            return actions
        if isinstance(event, SpeechPaused):
            actions += self._discard()  # the person spoke again after an earlier pause
            if recogniser_idle:  # never compete with real work for the recogniser
                self._early = (event.start_sample, event.end_sample)
                actions.append(StartEarlyASR(event.audio))
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
            )
        )
        return actions

    def _discard(self) -> list[TurnAction]:
        if self._early is None:
            return []
        self._early = None
        return [DiscardEarlyASR()]
