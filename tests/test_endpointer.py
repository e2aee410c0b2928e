"""The VAD endpointer (``media/endpointer.py``): exact tests with hand-made probabilities,
then the real Silero model on synthesised signals and the committed speech clips.

Every hand-made chunk is 512 samples whose value is the chunk's index, so an utterance's
audio says exactly which chunks it holds. With the default settings at 16 kHz:
min_speech 160 ms = 2560 samples = 5 chunks; silence 500 ms = 8000 samples, reached after
16 chunks (15 x 512 = 7680); pre-roll 300 ms = 4800 samples, kept as 10 chunks (5120).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gateway.testing.loopback import DATA, load_clips, read_wav
from media import Float32Array
from media.endpointer import (
    Endpointer,
    EndpointerEvent,
    EndpointerSettings,
    SpeechDipped,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
    last_voiced,
)
from media.vad import CHUNK_SAMPLES, SAMPLE_RATE, SileroModel

CHUNK = 512
SPEECH = 0.9
SILENT = 0.0
MURMUR = 0.4  # between neg_threshold (0.35) and threshold (0.5)

Described = tuple[Any, ...]


def describe(event: EndpointerEvent) -> Described:
    """An event as a comparable tuple; the audio is checked separately."""
    if isinstance(event, SpeechStarted):
        return ("started", event.start_sample // CHUNK)
    if isinstance(event, SpeechPaused):
        return ("paused", event.start_sample // CHUNK, event.end_sample // CHUNK)
    if isinstance(event, SpeechResumed):
        return ("resumed", event.start_sample // CHUNK)
    if isinstance(event, SpeechDipped):
        return ("dipped", event.start_sample // CHUNK, event.end_sample // CHUNK)
    if isinstance(event, SpeechProgress):
        return ("progress", event.start_sample // CHUNK, event.end_sample // CHUNK)
    return ("ended", event.start_sample // CHUNK, event.end_sample // CHUNK, event.reason)


def chunks(first: int, stop: int, size: int = CHUNK) -> Float32Array:
    """The audio of hand-made chunks ``first .. stop - 1``."""
    return np.concatenate([np.full(size, i, np.float32) for i in range(first, stop)])


class Feeder:
    """Feeds numbered chunks and logs ``(chunk index, event)``; SpeechPaused and
    SpeechResumed only with ``paused=True`` (early offers, tested on their own)."""

    def __init__(self, settings: EndpointerSettings | None = None, *, paused: bool = False) -> None:
        self.endpointer = Endpointer(settings)
        self.paused = paused
        self.index = 0
        self.log: list[tuple[int, EndpointerEvent]] = []

    def feed(self, probability: float, count: int = 1, size: int = CHUNK) -> list[Described]:
        new: list[Described] = []
        for _ in range(count):
            chunk = np.full(size, self.index, np.float32)
            for event in self.endpointer.process(chunk, probability):
                if (
                    isinstance(event, SpeechPaused | SpeechResumed | SpeechDipped)
                    and not self.paused
                ):
                    continue
                self.log.append((self.index, event))
                new.append(describe(event))
            self.index += 1
        return new

    def flush(self) -> list[EndpointerEvent]:
        return self.endpointer.flush()

    def described(self) -> list[tuple[int, Described]]:
        return [(index, describe(event)) for index, event in self.log]

    def ended(self) -> list[SpeechEnded]:
        return [event for _, event in self.log if isinstance(event, SpeechEnded)]


def only_ended(events: list[EndpointerEvent]) -> SpeechEnded:
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, SpeechEnded)
    return event


def assert_audio(event: SpeechEnded, expected: Float32Array) -> None:
    assert event.audio.dtype == np.float32
    assert event.audio.shape == expected.shape
    np.testing.assert_array_equal(event.audio, expected)


# --- settings ---


def test_default_settings_in_samples() -> None:
    s = EndpointerSettings()
    assert (s.sample_rate, s.threshold, s.neg_threshold) == (16_000, 0.5, 0.35)
    assert s.samples(s.min_speech_ms) == 2560
    assert s.samples(s.silence_ms) == 8000
    assert s.samples(s.pre_roll_ms) == 4800
    assert s.samples(s.max_utterance_ms) == 448_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.3, "neg_threshold": 0.35}, "neg_threshold <= threshold"),
        ({"threshold": 1.0}, "threshold < 1"),
        ({"neg_threshold": 0.0}, "0 < neg_threshold"),
        ({"neg_threshold": -0.1}, "0 < neg_threshold"),
        ({"max_utterance_ms": 160}, "max_utterance_ms must exceed min_speech_ms"),
        ({"max_utterance_ms": 100}, "max_utterance_ms must exceed min_speech_ms"),
        ({"sample_rate": 0}, "sample_rate must be positive"),
        ({"silence_ms": -1}, "must not be negative"),
        ({"pre_roll_ms": -1}, "must not be negative"),
        ({"min_speech_ms": -1}, "must not be negative"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointerSettings(**kwargs)


def test_equal_thresholds_are_allowed() -> None:
    assert EndpointerSettings(threshold=0.5, neg_threshold=0.5).neg_threshold == 0.5


# --- silence and blips ---


def test_silence_and_murmur_alone_produce_nothing() -> None:
    f = Feeder()
    assert f.feed(SILENT, 500) == []
    assert f.feed(MURMUR, 500) == []
    assert f.flush() == []
    assert not f.endpointer.in_speech


def test_blip_shorter_than_min_speech_gives_nothing() -> None:
    f = Feeder()
    f.feed(SILENT, 20)
    f.feed(SPEECH, 4)
    f.feed(SILENT, 100)
    assert f.log == []
    assert f.flush() == []


@pytest.mark.parametrize(
    ("min_speech_ms", "speech_chunks"),
    [(160, 5), (100, 4), (64, 2), (33, 2), (32, 1), (0, 1)],
)
def test_speech_started_only_after_min_speech(min_speech_ms: int, speech_chunks: int) -> None:
    f = Feeder(EndpointerSettings(min_speech_ms=min_speech_ms))
    f.feed(SILENT, 3)
    assert f.feed(SPEECH, speech_chunks - 1) == []
    assert not f.endpointer.in_speech
    assert f.feed(SPEECH) == [("started", 3)]
    assert f.endpointer.in_speech


def test_speech_run_counts_speech_chunks_only_and_murmur_does_not_reset_it() -> None:
    f = Feeder()
    f.feed(SPEECH, 3)
    f.feed(MURMUR, 2)
    f.feed(SILENT, 3)
    assert f.feed(SPEECH) == []
    assert f.feed(SPEECH) == [("started", 0)]  # the 5th speech chunk, index 9


def test_candidate_survives_15_silent_chunks_not_16() -> None:
    survives = Feeder()
    survives.feed(SPEECH, 4)
    survives.feed(SILENT, 15)
    assert survives.feed(SPEECH) == [("started", 0)]

    dropped = Feeder()
    dropped.feed(SPEECH, 4)  # chunks 0-3
    dropped.feed(SILENT, 16)  # chunks 4-19: the candidate is abandoned at 19
    assert dropped.feed(SPEECH, 4) == []  # a new candidate from chunk 20
    assert dropped.feed(SPEECH) == [("started", 20)]
    # The abandoned audio became pre-roll: the 10 chunks before chunk 20.
    assert_audio(only_ended(dropped.flush()), chunks(10, 25))


# --- pre-roll ---


def test_pre_roll_keeps_300_ms_before_the_first_speech_chunk() -> None:
    f = Feeder()
    f.feed(SILENT, 20)
    f.feed(SPEECH, 5)
    f.feed(SILENT, 16)
    assert f.described() == [(24, ("started", 20)), (40, ("ended", 20, 25, "silence"))]
    (ended,) = f.ended()
    # 10 chunks (5120 samples) is the fewest whole chunks holding 4800 samples.
    assert_audio(ended, chunks(10, 41))
    assert ended.start_sample == 20 * CHUNK
    assert ended.end_sample == 25 * CHUNK
    assert ended.speech_samples == 5 * CHUNK


def test_pre_roll_is_exact_when_chunks_divide_it() -> None:
    size = 480  # 10 x 480 = 4800 samples = 300 ms exactly
    f = Feeder()
    f.feed(SILENT, 20, size=size)
    f.feed(SPEECH, 6, size=size)  # 6 x 480 = 2880 >= 2560
    ended = only_ended(f.flush())
    assert_audio(ended, chunks(10, 26, size=size))
    assert len(ended.audio) == 4800 + 6 * 480
    assert (ended.start_sample, ended.end_sample) == (20 * size, 26 * size)


def test_pre_roll_is_what_there_is_at_the_start_of_a_stream() -> None:
    f = Feeder()
    f.feed(SILENT, 3)
    f.feed(SPEECH, 5)
    assert_audio(only_ended(f.flush()), chunks(0, 8))


def test_no_pre_roll_when_set_to_zero() -> None:
    f = Feeder(EndpointerSettings(pre_roll_ms=0))
    f.feed(SILENT, 20)
    f.feed(SPEECH, 5)
    assert_audio(only_ended(f.flush()), chunks(20, 25))


def test_silence_that_ended_an_utterance_is_the_next_ones_pre_roll() -> None:
    f = Feeder()
    f.feed(SPEECH, 5)  # 0-4
    f.feed(SILENT, 16)  # 5-20: ends at 20
    f.feed(SPEECH, 5)  # 21-25: speech again at once
    assert f.described() == [
        (4, ("started", 0)),
        (20, ("ended", 0, 5, "silence")),
        (25, ("started", 21)),
    ]
    assert_audio(only_ended(f.flush()), chunks(11, 26))


def test_pre_roll_after_a_short_hangover_holds_no_earlier_speech() -> None:
    f = Feeder(EndpointerSettings(silence_ms=100))  # 1600 samples: 4 chunks
    f.feed(SPEECH, 5)  # 0-4
    f.feed(SILENT, 4)  # 5-8: ends at 8
    f.feed(SPEECH, 5)  # 9-13
    assert f.described() == [
        (4, ("started", 0)),
        (8, ("ended", 0, 5, "silence")),
        (13, ("started", 9)),
    ]
    assert_audio(only_ended(f.flush()), chunks(5, 14))


# --- hangover and hysteresis ---


@pytest.mark.parametrize(
    ("silence_ms", "silent_chunks"),
    [(500, 16), (256, 8), (257, 9), (100, 4), (1000, 32)],
)
def test_speech_ends_exactly_when_silence_reaches_silence_ms(
    silence_ms: int, silent_chunks: int
) -> None:
    f = Feeder(EndpointerSettings(silence_ms=silence_ms))
    f.feed(SPEECH, 5)
    assert f.feed(SILENT, silent_chunks - 1) == []
    assert f.endpointer.in_speech
    assert f.feed(SILENT) == [("ended", 0, 5, "silence")]
    assert not f.endpointer.in_speech
    (ended,) = f.ended()
    assert_audio(ended, chunks(0, 5 + silent_chunks))


def test_murmur_does_not_start_the_silence_clock() -> None:
    f = Feeder()
    f.feed(SPEECH, 5)  # 0-4
    assert f.feed(MURMUR, 100) == []  # 5-104
    assert f.endpointer.in_speech
    assert f.feed(SILENT, 15) == []  # 105-119
    assert f.feed(SILENT) == [("ended", 0, 105, "silence")]  # 120


def test_murmur_does_not_reset_the_silence_clock() -> None:
    f = Feeder()
    f.feed(SPEECH, 5)  # 0-4
    f.feed(SILENT)  # 5: the clock starts
    assert f.feed(MURMUR, 14) == []  # 6-19
    assert f.feed(MURMUR) == [("ended", 0, 5, "silence")]  # 20: 16 chunks since 5


def test_a_speech_chunk_resets_the_silence_clock() -> None:
    f = Feeder()
    f.feed(SPEECH, 5)  # 0-4
    f.feed(SILENT, 10)  # 5-14
    f.feed(SPEECH)  # 15
    assert f.feed(SILENT, 15) == []  # 16-30
    assert f.feed(SILENT) == [("ended", 0, 16, "silence")]  # 31


def test_threshold_is_speech_and_neg_threshold_is_not_silence() -> None:
    f = Feeder()
    assert f.feed(0.5, 5) == [("started", 0)]
    assert f.feed(0.35, 100) == []
    assert f.feed(0.3499, 15) == []
    assert f.feed(0.3499) == [("ended", 0, 105, "silence")]


# --- maximum length ---


def test_max_length_splits_and_starts_again_at_once() -> None:
    f = Feeder(EndpointerSettings(max_utterance_ms=1000))  # 16000 samples: 32 chunks
    f.feed(SPEECH, 100)  # 0-99
    f.feed(SILENT, 16)  # 100-115
    assert f.described() == [
        (4, ("started", 0)),
        (31, ("ended", 0, 32, "max_length")),
        (31, ("started", 32)),
        (63, ("ended", 32, 64, "max_length")),
        (63, ("started", 64)),
        (95, ("ended", 64, 96, "max_length")),
        (95, ("started", 96)),
        (115, ("ended", 96, 100, "silence")),
    ]
    first, second, third, last = f.ended()
    assert_audio(first, chunks(0, 32))
    assert_audio(second, chunks(32, 64))
    assert_audio(third, chunks(64, 96))
    assert_audio(last, chunks(96, 116))


def test_max_length_counts_the_pre_roll() -> None:
    f = Feeder(EndpointerSettings(max_utterance_ms=1000))
    f.feed(SILENT, 20)
    f.feed(SPEECH, 22)  # 20-41: 10 pre-roll + 22 chunks = 16384 >= 16000
    assert f.described() == [
        (24, ("started", 20)),
        (41, ("ended", 20, 42, "max_length")),
        (41, ("started", 42)),
    ]
    (ended,) = f.ended()
    assert_audio(ended, chunks(10, 42))


def test_max_length_during_a_pause_ends_at_the_pause() -> None:
    f = Feeder(EndpointerSettings(max_utterance_ms=1000))
    f.feed(SPEECH, 28)  # 0-27
    f.feed(SILENT, 4)  # 28-31: 32 chunks reached while pausing
    assert f.described() == [(4, ("started", 0)), (31, ("ended", 0, 28, "max_length"))]
    assert not f.endpointer.in_speech
    assert f.feed(SILENT, 30) == []  # 32-61: no utterance made of silence
    assert f.feed(SPEECH, 5) == [("started", 62)]
    (first,) = f.ended()
    assert_audio(first, chunks(0, 32))
    # The pause after it, then the silence, are the next utterance's pre-roll.
    assert_audio(only_ended(f.flush()), chunks(52, 67))


def test_a_candidate_under_murmur_is_bounded_by_max_length() -> None:
    f = Feeder(EndpointerSettings(max_utterance_ms=1000))
    f.feed(SPEECH)  # 0: a candidate
    f.feed(MURMUR, 200)  # 1-200: abandoned when it reaches 32 chunks
    assert f.feed(SPEECH, 4) == []  # 201-204: a new candidate, not the old one's 5th chunk
    assert f.feed(SPEECH) == [("started", 201)]
    assert_audio(only_ended(f.flush()), chunks(191, 206))


# --- flush ---


def test_flush_during_speech_ends_the_utterance() -> None:
    f = Feeder()
    f.feed(SILENT, 2)
    f.feed(SPEECH, 8)  # 2-9
    ended = only_ended(f.flush())
    assert describe(ended) == ("ended", 2, 10, "flush")
    assert_audio(ended, chunks(0, 10))
    assert not f.endpointer.in_speech
    assert f.flush() == []


def test_flush_during_a_pause_ends_at_the_pause() -> None:
    f = Feeder()
    f.feed(SPEECH, 5)  # 0-4
    f.feed(SILENT, 3)  # 5-7
    ended = only_ended(f.flush())
    assert describe(ended) == ("ended", 0, 5, "flush")
    assert_audio(ended, chunks(0, 8))


def test_flush_during_a_candidate_gives_nothing_and_keeps_it_as_pre_roll() -> None:
    f = Feeder()
    f.feed(SPEECH, 4)  # 0-3
    assert f.flush() == []
    assert not f.endpointer.in_speech
    assert f.feed(SPEECH, 4) == []  # 4-7: the run was reset
    assert f.feed(SPEECH) == [("started", 4)]
    assert_audio(only_ended(f.flush()), chunks(0, 9))


# --- the real Silero model ---


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def run_silero(model: SileroModel, audio: Float32Array) -> list[EndpointerEvent]:
    stream = model.stream()
    endpointer = Endpointer()
    events: list[EndpointerEvent] = []
    for start in range(0, len(audio) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        chunk = audio[start : start + CHUNK_SAMPLES]
        events += endpointer.process(chunk, stream.probability(chunk))
    events += endpointer.flush()
    return [e for e in events if not isinstance(e, SpeechPaused)]


def silence(seconds: float) -> Float32Array:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def test_silero_rejects_a_chunk_of_the_wrong_size(silero: SileroModel) -> None:
    with pytest.raises(ValueError, match="Silero needs 512 samples"):
        silero.stream().probability(np.zeros(480, np.float32))


def test_silero_hears_nothing_in_silence(silero: SileroModel) -> None:
    assert run_silero(silero, silence(3)) == []


@pytest.mark.parametrize("frequency", [440.0, 1000.0])
def test_silero_hears_nothing_in_a_pure_tone(silero: SileroModel, frequency: float) -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    assert run_silero(silero, np.concatenate([silence(0.5), tone, silence(1)])) == []


def test_silero_hears_nothing_in_the_noise_clip(silero: SileroModel) -> None:
    noise = read_wav(DATA / "noise.wav")
    assert run_silero(silero, np.concatenate([silence(1), noise, silence(1)])) == []


def speech_clips() -> Iterator[tuple[str, Float32Array]]:
    yield from ((text, audio) for text, audio in load_clips() if text)


@pytest.mark.parametrize(
    ("text", "clip"), list(speech_clips()), ids=[t[:12] for t, _ in speech_clips()]
)
def test_silero_finds_each_spoken_clip_as_one_utterance(
    silero: SileroModel, text: str, clip: Float32Array
) -> None:
    padded = np.concatenate([silence(1), clip, silence(1)])
    loud = np.flatnonzero(np.abs(padded) > 0.01)
    onset, offset = int(loud[0]), int(loud[-1]) + 1  # the audible part, in samples

    events = run_silero(silero, padded)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded], text
    started, ended = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(ended, SpeechEnded)
    assert ended.reason == "silence"
    assert started.start_sample == ended.start_sample
    # Silero fires a little after the onset, and lets go a little after the offset.
    assert onset - 1600 <= ended.start_sample <= onset + 1600  # ±100 ms
    assert offset - 1600 <= ended.end_sample <= offset + 3200  # -100 / +200 ms
    assert abs(ended.speech_samples - (offset - onset)) <= 2400  # ±150 ms
    # The utterance is the stream itself, from 10 chunks of pre-roll up to the hangover.
    audio_start = ended.start_sample - 10 * CHUNK_SAMPLES
    assert audio_start <= onset
    np.testing.assert_array_equal(ended.audio, padded[audio_start : audio_start + len(ended.audio)])
    assert audio_start + len(ended.audio) >= offset + 8000  # the 500 ms hangover


def test_silero_separates_clips_in_one_stream(silero: SileroModel) -> None:
    clips = [clip for _, clip in speech_clips()]
    stream = [silence(1)]
    spans = []  # (onset, offset) of each clip's audible part, in stream samples
    position = SAMPLE_RATE
    for clip in clips:
        loud = np.flatnonzero(np.abs(clip) > 0.01)
        spans.append((position + int(loud[0]), position + int(loud[-1]) + 1))
        stream += [clip, silence(1)]
        position += len(clip) + SAMPLE_RATE
    audio = np.concatenate(stream)

    events = run_silero(silero, audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * len(clips)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    for utterance, (onset, offset) in zip(ended, spans, strict=True):
        assert utterance.reason == "silence"
        assert abs(utterance.start_sample - onset) <= 1600
        assert offset - 1600 <= utterance.end_sample <= offset + 3200
        audio_start = utterance.start_sample - 10 * CHUNK_SAMPLES
        np.testing.assert_array_equal(
            utterance.audio, audio[audio_start : audio_start + len(utterance.audio)]
        )


def test_pause_offers_the_utterance_once_and_the_end_matches_it() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200), paused=True)  # 200 ms = 6.25 -> 7 chunks
    f.feed(SILENT, 10)
    f.feed(SPEECH, 20)  # chunks 10..29
    f.feed(SILENT, 20)
    kinds = [(index, described[0]) for index, described in f.described()]
    assert kinds == [(14, "started"), (36, "paused"), (45, "ended")]
    paused = next(e for _, e in f.log if isinstance(e, SpeechPaused))
    ended = f.ended()[0]
    assert (paused.start_sample, paused.end_sample) == (ended.start_sample, ended.end_sample)
    # What was offered at the pause is the start of what the end delivers.
    assert_audio_prefix(ended.audio, paused.audio)


def test_speech_after_a_pause_pauses_again_with_a_later_end() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200), paused=True)
    f.feed(SPEECH, 10)
    f.feed(SILENT, 8)  # a pause, but shorter than the 500 ms hangover
    f.feed(SPEECH, 10)
    f.feed(SILENT, 20)
    paused = [e for _, e in f.log if isinstance(e, SpeechPaused)]
    ended = f.ended()
    assert len(ended) == 1
    assert [p.end_sample // CHUNK for p in paused] == [10, 28]
    assert paused[-1].end_sample == ended[0].end_sample


def test_no_pause_event_when_disabled_or_not_shorter_than_the_hangover() -> None:
    for settings in (EndpointerSettings(pause_ms=0), EndpointerSettings(pause_ms=500)):
        f = Feeder(settings, paused=True)
        f.feed(SPEECH, 10)
        f.feed(SILENT, 20)
        assert [d[0] for _, d in f.described()] == ["started", "ended"]


def assert_audio_prefix(whole: Float32Array, prefix: Float32Array) -> None:
    assert len(prefix) < len(whole)
    np.testing.assert_array_equal(whole[: len(prefix)], prefix)


# --- where the voice itself ended ---


def test_last_voiced_finds_where_the_voice_fades() -> None:
    rate = 16_000
    voice = 0.3 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate).astype(np.float32)
    audio = np.concatenate([voice, np.full(rate // 5, 1e-4, dtype=np.float32)])
    # Silero would call it silence ~70 ms late: search back from there.
    assert last_voiced(audio, rate + 1120, rate=rate) == rate
    # A quiet microphone: the threshold is relative to the speech before it.
    assert last_voiced((audio * 0.01).astype(np.float32), rate + 1120, rate=rate) == rate
    # Nothing voiced within the search: the earliest point searched.
    assert last_voiced(np.zeros(rate, dtype=np.float32), rate, rate=rate) == rate - 3200
    assert last_voiced(audio, 0, rate=rate) == 0


def test_speech_ended_carries_the_voiced_end() -> None:
    settings = EndpointerSettings(silence_ms=160, min_speech_ms=64, pre_roll_ms=0, pause_ms=0)
    endpointer = Endpointer(settings)
    loud = np.full(512, 0.3, dtype=np.float32)
    quiet = np.zeros(512, dtype=np.float32)
    events = []
    for _ in range(10):
        events += endpointer.process(loud, 0.9)
    events += endpointer.process(loud, 0.4)  # still voiced, but Silero hesitates
    events += endpointer.process(quiet, 0.4)
    for _ in range(8):
        events += endpointer.process(quiet, 0.1)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == 1
    # The voice stopped after the 11th chunk (found to a 10 ms window); the VAD's silence
    # began a chunk later.
    assert ended[0].voiced_end_sample is not None
    assert 0 <= ended[0].voiced_end_sample - 11 * 512 < 160
    assert ended[0].end_sample == 12 * 512


# --- turn decisions: resumed speech, progress snapshots, ending a pause early ---


def test_speech_after_a_pause_is_resumed_once() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200), paused=True)
    f.feed(SPEECH, 10)  # 0-9; started at 4
    assert f.feed(SILENT, 7) == [("paused", 0, 10)]  # 10-16: 7 x 512 >= 3200 samples
    assert f.feed(SPEECH, 3) == [("resumed", 0)]  # only the first voiced chunk
    assert f.feed(SILENT, 3) == []  # a short dip, under pause_ms: no pause, no resume
    assert f.feed(SPEECH) == []


def test_end_pause_ends_at_once_when_the_pause_is_long_enough() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200), paused=True)
    f.feed(SPEECH, 10)
    f.feed(SILENT, 7)  # paused at chunk 16
    ended = f.endpointer.end_pause()
    assert [describe(e) for e in ended] == [("ended", 0, 10, "decided")]
    assert f.endpointer.in_speech is False
    assert f.feed(SILENT, 30) == []  # nothing else ends


def test_end_pause_after_a_shorter_hangover_and_speech_cancels_it() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200, silence_ms=1000), paused=True)
    f.feed(SPEECH, 10)
    f.feed(SILENT, 7)  # 10-16: paused
    assert f.endpointer.end_pause(after_ms=400) == []  # 400 ms = 12.5 chunks
    assert f.feed(SILENT, 5) == []  # 17-21: 12 chunks of silence
    assert f.feed(SILENT) == [("ended", 0, 10, "decided")]  # 22: 13 chunks

    g = Feeder(EndpointerSettings(pause_ms=200, silence_ms=1000), paused=True)
    g.feed(SPEECH, 10)
    g.feed(SILENT, 7)
    g.endpointer.end_pause(after_ms=400)
    assert g.feed(SPEECH) == [("resumed", 0)]  # the person went on: back to the hangover
    g.feed(SILENT, 30)  # 30 chunks < the 1000 ms hangover (31.25 chunks)
    assert g.feed(SILENT, 2) == [("ended", 0, 18, "silence")]


def test_end_pause_does_nothing_unless_paused() -> None:
    f = Feeder()
    assert f.endpointer.end_pause() == []  # silent
    f.feed(SPEECH, 10)
    assert f.endpointer.end_pause() == []  # talking
    assert f.feed(SILENT, 16) == [("ended", 0, 10, "silence")]


def test_progress_offers_the_utterance_so_far_while_speech_goes_on() -> None:
    f = Feeder(EndpointerSettings(progress_ms=640))  # 20 chunks
    f.feed(SPEECH, 25)  # started at chunk 4 (start 0): the first after half, at 10 chunks
    f.feed(SPEECH, 10)  # then every 20 chunks: at 30
    progress = [(i, e) for i, e in f.log if isinstance(e, SpeechProgress)]
    assert [(i, describe(e)) for i, e in progress] == [
        (9, ("progress", 0, 10)),
        (29, ("progress", 0, 30)),
    ]
    np.testing.assert_array_equal(progress[0][1].audio, chunks(0, 10))
    f.feed(SILENT, 12)  # no progress during a pause
    assert not [e for i, e in f.log if isinstance(e, SpeechProgress) and i >= 35]


def test_no_progress_by_default() -> None:
    f = Feeder()
    f.feed(SPEECH, 100)
    assert not [e for _, e in f.log if isinstance(e, SpeechProgress)]


def test_dips_offer_the_utterance_at_the_first_silent_chunk() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200, dips=True, dip_ms=0), paused=True)
    f.feed(SPEECH, 10)  # 0-9
    assert f.feed(SILENT) == [("dipped", 0, 10)]  # chunk 10: the silence begins
    dipped = f.log[-1][1]
    assert isinstance(dipped, SpeechDipped)
    np.testing.assert_array_equal(dipped.audio, chunks(0, 11))
    assert f.feed(SILENT, 2) == []  # once per silence
    assert f.feed(SPEECH) == [("resumed", 0)]  # between two words after all
    f.feed(SPEECH, 5)
    assert f.feed(SILENT) == [("dipped", 0, 19)]
    assert f.feed(SILENT, 6) == [("paused", 0, 19)]  # the same silence, 200 ms in
    assert f.feed(SILENT, 9)[-1] == ("ended", 0, 19, "silence")


def test_a_murmur_is_not_a_dip_and_dips_are_off_by_default() -> None:
    f = Feeder(EndpointerSettings(dips=True), paused=True)
    f.feed(SPEECH, 10)
    assert f.feed(MURMUR, 3) == []  # between the thresholds: not silence
    g = Feeder(paused=True)
    g.feed(SPEECH, 10)
    assert g.feed(SILENT, 2) == []


def test_a_dip_waits_out_the_gaps_between_words() -> None:
    f = Feeder(EndpointerSettings(pause_ms=200, dips=True, dip_ms=96), paused=True)
    f.feed(SPEECH, 10)
    assert f.feed(SILENT, 2) == []  # 64 ms: a gap between two words
    assert f.feed(SPEECH) == []  # no dip, so nothing resumed
    assert f.feed(SILENT, 2) == []
    assert f.feed(SILENT) == [("dipped", 0, 13)]  # 96 ms of silence, from where it began
