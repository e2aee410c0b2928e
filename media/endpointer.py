"""VAD endpointing: speech probabilities per chunk in, utterances out. Pure: no I/O, no clock.

Time is counted in samples, so a test that feeds N chunks knows exactly what comes out::

    SILENCE ──p ≥ threshold──▶ CANDIDATE ──speech ≥ min_speech──▶ SPEECH (SpeechStarted)
       ▲                          │                                   │
       └─ silence ≥ hangover, ────┘      silence ≥ hangover, or max length (SpeechEnded)
          or max length

While speech goes on, ``SpeechProgress`` offers the utterance so far every ``progress_ms``
(live captions). With ``dips``, a silence of ``dip_ms`` offers it too (``SpeechDipped``:
the voice dropped, perhaps between words, perhaps at the end): transcribing from there is
the earliest a turn's transcript can usefully start. 200 ms into a silence, ``SpeechPaused``
offers it for early ASR and a decision on whether the turn is over, which may end it at
once or sooner than the hangover (:meth:`Endpointer.end_pause`). Speech after such a dip
or pause is ``SpeechResumed``.

Silence starts at the first chunk under ``neg_threshold`` and only a chunk at or above
``threshold`` interrupts it (Silero's own hysteresis), so a murmur between the two
thresholds does not keep an utterance open forever. ``pre_roll_ms`` of audio before the
first speech chunk is kept, since Silero fires a little after the onset of a word; the
silence that ended one utterance is the pre-roll of the next.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from media import Float32Array

# "decided": ended before the hangover, because the turn was judged complete (end_pause).
EndReason = Literal["silence", "max_length", "flush", "decided"]


@dataclass(frozen=True)
class EndpointerSettings:
    sample_rate: int = 16_000
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 160
    silence_ms: int = 500
    pre_roll_ms: int = 300
    # Whisper sees 30 s at a time; split a little before so nothing is cut off.
    max_utterance_ms: int = 28_000
    # After this much of the hangover, SpeechPaused offers the utterance so far, so that
    # ASR can start before the end is certain (0: never). Usually the end is confirmed.
    pause_ms: int = 200
    # While speech goes on, SpeechProgress offers the utterance so far this often (0: never),
    # the first time after half of it: a caption soon after the person starts.
    progress_ms: int = 0
    # SpeechDipped once a silence in speech has lasted dip_ms: longer than most gaps
    # between words, so that little of what starts there is wasted, but well before pause_ms.
    dips: bool = False
    dip_ms: int = 96

    def samples(self, ms: int) -> int:
        return ms * self.sample_rate // 1000

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if (
            min(
                self.min_speech_ms,
                self.silence_ms,
                self.pre_roll_ms,
                self.pause_ms,
                self.progress_ms,
                self.dip_ms,
            )
            < 0
        ):
            raise ValueError(
                "min_speech_ms, silence_ms, pre_roll_ms, pause_ms, progress_ms and dip_ms must "
                "not be negative"
            )
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError("need 0 < neg_threshold <= threshold < 1")
        if self.max_utterance_ms <= self.min_speech_ms:
            raise ValueError("max_utterance_ms must exceed min_speech_ms")


@dataclass(frozen=True)
class SpeechStarted:
    start_sample: int  # stream position of the first speech chunk


@dataclass(frozen=True)
class SpeechEnded:
    audio: Float32Array  # pre-roll + speech + the silence that ended it
    start_sample: int
    end_sample: int  # stream position where the VAD's silence began
    reason: EndReason
    # Where the voice itself faded, a little before Silero calls it silence (~70 ms on
    # the test speech): what "end of speech" timings start from. None: end_sample.
    voiced_end_sample: int | None = None

    @property
    def speech_samples(self) -> int:
        return self.end_sample - self.start_sample


@dataclass(frozen=True)
class SpeechPaused:
    """Speech has paused for ``pause_ms``: if no speech follows within the hangover, the
    utterance will end at ``end_sample`` with this same speech. ``audio`` is a snapshot."""

    audio: Float32Array
    start_sample: int
    end_sample: int  # where the speech paused; equal to the SpeechEnded's if it ends here


@dataclass(frozen=True)
class SpeechDipped:
    """The voice has just dropped to silence (``dip_ms`` of it): perhaps between two words,
    perhaps the end. ``audio`` is the utterance so far; ``end_sample`` is where the silence
    began, as in the ``SpeechPaused`` that follows if the silence lasts."""

    audio: Float32Array
    start_sample: int
    end_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    """Speech again after a ``SpeechDipped`` or ``SpeechPaused``: that silence was not the
    end."""

    start_sample: int  # the utterance's, as in its SpeechStarted


@dataclass(frozen=True)
class SpeechProgress:
    """Another ``progress_ms`` of speech: ``audio`` is the utterance so far (a snapshot)."""

    audio: Float32Array
    start_sample: int
    end_sample: int  # the stream position the snapshot reaches


EndpointerEvent = (
    SpeechStarted | SpeechProgress | SpeechDipped | SpeechPaused | SpeechResumed | SpeechEnded
)


class _State(enum.Enum):
    SILENCE = "silence"
    CANDIDATE = "candidate"
    SPEECH = "speech"


class Endpointer:
    def __init__(self, settings: EndpointerSettings | None = None) -> None:
        self.settings = s = settings or EndpointerSettings()
        self._min_speech = s.samples(s.min_speech_ms)
        self._hangover = s.samples(s.silence_ms)
        self._pre_roll = s.samples(s.pre_roll_ms)
        self._max_len = s.samples(s.max_utterance_ms)
        self._state = _State.SILENCE
        self._position = 0  # samples consumed so far
        self._history: deque[Float32Array] = deque()  # pre-roll while silent
        self._history_len = 0
        self._buffer: list[Float32Array] = []  # the utterance being collected
        self._buffer_len = 0
        self._start = 0
        self._speech_run = 0
        self._silence_start: int | None = None
        self._pause = s.samples(s.pause_ms) if 0 < s.pause_ms < s.silence_ms else None
        self._paused = False  # SpeechPaused already sent for the current silence
        self._dipped = False  # SpeechDipped sent for the current silence
        self._dip = max(1, s.samples(s.dip_ms)) if s.dips else None
        self._end_after: int | None = None  # end_pause's shorter hangover, for this pause
        self._progress = s.samples(s.progress_ms)
        self._next_progress = 0  # stream position of the next SpeechProgress

    @property
    def in_speech(self) -> bool:
        return self._state is _State.SPEECH

    @property
    def hearing(self) -> bool:
        """Speech may have begun: a candidate not yet long enough, or speech."""
        return self._state is not _State.SILENCE

    def process(self, chunk: Float32Array, probability: float) -> list[EndpointerEvent]:
        """Feed the next chunk and Silero's probability for it."""
        s = self.settings
        begin = self._position
        self._position += len(chunk)
        is_speech = probability >= s.threshold
        is_silence = probability < s.neg_threshold

        if self._state is _State.SILENCE:
            if not is_speech:
                self._remember(chunk)
                return []
            self._state = _State.CANDIDATE
            self._start = begin
            self._speech_run = 0
            self._silence_start = None
            self._buffer = list(self._history)
            self._buffer_len = self._history_len
            self._history.clear()
            self._history_len = 0

        self._append(chunk)
        events: list[EndpointerEvent] = []
        if is_speech:
            if self._paused or self._dipped:
                events.append(SpeechResumed(self._start))
            self._silence_start = None
            self._paused = False
            self._dipped = False
            self._end_after = None
            if self._state is _State.CANDIDATE:
                self._speech_run += len(chunk)
        elif is_silence and self._silence_start is None:
            self._silence_start = begin

        if self._state is _State.CANDIDATE:
            if self._speech_run >= self._min_speech:
                self._state = _State.SPEECH
                self._next_progress = self._start + self._progress // 2  # the first sooner
                events.append(SpeechStarted(self._start))
            elif self._silence_long_enough() or self._buffer_len >= self._max_len:
                # A murmur between the thresholds never starts the silence clock, so a
                # candidate also gives up at the length limit rather than grow without bound.
                self._abandon()
                return []

        if self._state is _State.SPEECH:
            if self._silence_long_enough():
                reason: EndReason = "silence" if self._end_after is None else "decided"
                events.append(self._finish_in_silence(reason))
            elif self._silence_start is not None and self._buffer_len >= self._max_len:
                # Too long, but already pausing: end at the pause, not with an utterance
                # of nothing but silence to follow.
                events.append(self._finish_in_silence("max_length"))
            elif self._buffer_len >= self._max_len:
                events.append(self._finish(self._position, "max_length"))
                # The person is still talking: the next utterance starts right here.
                self._state = _State.SPEECH
                self._start = self._position
                self._next_progress = self._start + self._progress // 2  # the first sooner
                events.append(SpeechStarted(self._start))
            elif self._dip_began():
                assert self._silence_start is not None
                self._dipped = True
                audio = np.concatenate(self._buffer)
                events.append(SpeechDipped(audio, self._start, self._silence_start))
            elif self._pause_reached():
                assert self._silence_start is not None
                self._paused = True
                audio = np.concatenate(self._buffer)
                events.append(SpeechPaused(audio, self._start, self._silence_start))
            elif self._progress_due():
                self._next_progress = self._position + self._progress
                audio = np.concatenate(self._buffer)
                events.append(SpeechProgress(audio, self._start, self._position))
        return events

    def end_pause(self, after_ms: int = 0) -> list[EndpointerEvent]:
        """The turn is judged over: end the utterance once this pause has lasted
        ``after_ms`` (now, if it already has) instead of the whole hangover. Speech before
        then cancels it. Nothing happens unless speech is paused."""
        if self._state is not _State.SPEECH or self._silence_start is None:
            return []
        self._end_after = self.settings.samples(after_ms)
        if self._silence_long_enough():
            return [self._finish_in_silence("decided")]
        return []

    def flush(self) -> list[EndpointerEvent]:
        """The stream ended: an utterance in progress ends here; a candidate is dropped."""
        if self._state is _State.SPEECH:
            end = self._silence_start if self._silence_start is not None else self._position
            return [self._finish(end, "flush")]
        if self._state is _State.CANDIDATE:
            self._abandon()
        return []

    # --- internals ---

    def _pause_reached(self) -> bool:
        return (
            self._pause is not None
            and not self._paused
            and self._silence_start is not None
            and self._position - self._silence_start >= self._pause
        )

    def _dip_began(self) -> bool:
        return (
            self._dip is not None
            and not self._dipped
            and self._silence_start is not None
            and self._position - self._silence_start >= self._dip
        )

    def _progress_due(self) -> bool:
        return (
            self._progress > 0
            and self._silence_start is None
            and self._position >= self._next_progress
        )

    def _silence_long_enough(self) -> bool:
        if self._silence_start is None:
            return False
        hangover = (
            self._hangover if self._end_after is None else min(self._hangover, self._end_after)
        )
        return self._position - self._silence_start >= hangover

    def _append(self, chunk: Float32Array) -> None:
        self._buffer.append(chunk)
        self._buffer_len += len(chunk)

    def _remember(self, chunk: Float32Array) -> None:
        self._history.append(chunk)
        self._history_len += len(chunk)
        while self._history and self._history_len - len(self._history[0]) >= self._pre_roll:
            self._history_len -= len(self._history.popleft())

    def _finish(self, end: int, reason: EndReason) -> SpeechEnded:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32)
        offset = self._position - len(audio)  # the stream position of audio[0]
        voiced = offset + last_voiced(audio, end - offset, rate=self.settings.sample_rate)
        event = SpeechEnded(
            audio=audio,
            start_sample=self._start,
            end_sample=end,
            reason=reason,
            voiced_end_sample=max(self._start, voiced),
        )
        self._reset()
        return event

    def _finish_in_silence(self, reason: EndReason) -> SpeechEnded:
        # The silence after the speech is the pre-roll of whatever is said next.
        silence_start = self._silence_start
        assert silence_start is not None
        tail: list[Float32Array] = []
        kept = 0
        begin = self._position
        for chunk in reversed(self._buffer):
            begin -= len(chunk)
            if begin < silence_start or kept >= self._pre_roll:
                break
            tail.append(chunk)
            kept += len(chunk)
        event = self._finish(silence_start, reason)
        for chunk in reversed(tail):
            self._remember(chunk)
        return event

    def _abandon(self) -> None:
        # Not speech after all: its audio becomes pre-roll for whatever comes next.
        buffered = self._buffer
        self._reset()
        for chunk in buffered:
            self._remember(chunk)

    def _reset(self) -> None:
        self._paused = False
        self._dipped = False
        self._end_after = None
        self._state = _State.SILENCE
        self._buffer = []
        self._buffer_len = 0
        self._speech_run = 0
        self._silence_start = None


def last_voiced(
    audio: Float32Array,
    end: int,
    *,
    rate: int,
    search_ms: int = 200,
    window_ms: int = 10,
    ratio: float = 0.05,
) -> int:
    """Where the voice fades before index ``end`` of ``audio``: just after the last
    ``window_ms`` window louder than ``ratio`` of the RMS of the second before ``end``,
    looking back at most ``search_ms``. Relative, so a quiet microphone works as well."""
    end = max(0, min(end, len(audio)))
    reference = audio[max(0, end - rate) : end]
    if not reference.size:
        return end
    floor = ratio * float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    window = max(1, rate * window_ms // 1000)
    lowest = max(0, end - rate * search_ms // 1000)
    position = end
    while position - window >= lowest:
        part = audio[position - window : position]
        if float(np.sqrt(np.mean(np.square(part, dtype=np.float64)))) > floor:
            return position
        position -= window
    return lowest
