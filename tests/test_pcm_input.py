"""PCM frames into a real listener (``media/pcm_input.py``: Silero VAD and the endpointer):
bad frames refused, audio beyond the budget dropped with one report, other rates heard at
16 kHz, each sample timed by when its frame arrived, and a stream that stops in the middle
of speech ends its turn with the silence it left."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from gateway.testing.loopback import load_clips
from media import Float32Array
from media.endpointer import EndpointerEvent, EndpointerSettings, SpeechEnded, SpeechStarted
from media.listener import AudioListener
from media.pcm import AudioBudget, AudioRateLimited, BadAudioFrame, StreamGap
from media.pcm_input import PcmInput
from media.vad import SileroModel, VadBatcher


class Listener(AudioListener):
    """A real listener that also records what it was fed, and when."""

    def __init__(self, settings: EndpointerSettings | None = None) -> None:
        self.events: list[tuple[float, EndpointerEvent]] = []
        super().__init__(
            VadBatcher(SileroModel()),
            settings or EndpointerSettings(silence_ms=500),
            lambda event: self.events.append((time.monotonic(), event)),
        )
        self.fed: list[tuple[int, float]] = []  # (samples, arrived)

    async def hear(self, samples: Float32Array, arrived: float) -> None:
        self.fed.append((len(samples), arrived))
        await super().hear(samples, arrived)

    @property
    def heard(self) -> int:
        return sum(n for n, _ in self.fed)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pcm16(audio: Float32Array) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_bad_frames_are_refused_and_the_stream_goes_on() -> None:
    listener = Listener()
    pcm = PcmInput(listener)
    with pytest.raises(BadAudioFrame):
        await pcm.receive(bytes(641))
    await pcm.receive(b"")  # nothing to hear, nothing wrong
    await pcm.receive(bytes(640))
    assert listener.fed[0][0] == 320
    assert listener.heard == 320


class Deaf(Listener):
    async def hear(self, samples: Float32Array, arrived: float) -> None:
        raise RuntimeError("broken")


async def test_frames_that_fail_are_dropped_with_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pcm = PcmInput(Deaf(), log_prefix="[s1] ")
    with caplog.at_level(logging.WARNING, logger="media.pcm_input"):
        for _ in range(5):
            await pcm.receive(bytes(640))
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("[s1] audio frame dropped", True)
    ]


async def test_audio_beyond_the_budget_is_dropped_and_reported_once() -> None:
    clock = FakeClock()
    listener = Listener()
    pcm = PcmInput(listener, budget=AudioBudget(burst_s=2.0), clock=clock)
    raised: list[AudioRateLimited] = []
    for _ in range(200):  # 200 frames of 15.625 ms (3.125 s) in one instant
        try:
            await pcm.receive(bytes(500))
        except AudioRateLimited as exc:
            raised.append(exc)
    [error] = raised
    assert error.code == "rate_limited"
    assert "faster than real time" in str(error)
    assert listener.heard == 128 * 250  # exactly the 2 s burst; nothing queued beyond it
    assert pcm.budget.dropped_s == 72 * 0.015625
    clock.now += 0.5  # half a second later, half a second more (and a little) passes
    for _ in range(34):
        await pcm.receive(bytes(500))
    assert listener.heard == (128 + 33) * 250


async def test_other_rates_are_heard_at_16_khz() -> None:
    listener = Listener()
    pcm = PcmInput(listener, rate=48_000)
    assert pcm.rate == 48_000
    for frame in frames(bytes(2 * 48_000), 1920):
        await pcm.receive(frame)
    assert 16_000 - 64 <= listener.heard <= 16_000
    pcm.set_rate(8_000)
    before = listener.heard
    for frame in frames(bytes(2 * 8_000), 320):
        await pcm.receive(frame)
    assert 16_000 - 64 <= listener.heard - before <= 16_000


async def test_each_sample_is_timed_by_its_frame_s_arrival() -> None:
    clock = FakeClock(100.0)
    listener = Listener()
    pcm = PcmInput(listener, clock=clock)
    for k in range(5):  # 100 ms frames at real-time pace
        clock.now = 100.0 + 0.1 * k
        await pcm.receive(bytes(3200))
    arrivals = listener.arrivals
    # The middle of frame 3 was captured 50 ms before that frame arrived.
    assert arrivals.time_of(3 * 1600 + 800) == pytest.approx(100.3 - 0.05)
    # A second sent in one frame: its first sample was said a second before it came.
    clock.now = 200.0
    await pcm.receive(bytes(32_000))
    assert arrivals.time_of(5 * 1600 + 1) == pytest.approx(199.0 + 1 / 16_000)
    assert arrivals.time_of(5 * 1600 + 16_000) == pytest.approx(200.0)


async def test_a_stream_that_stops_mid_speech_ends_its_turn() -> None:
    listener = Listener()
    pcm = PcmInput(listener, budget=AudioBudget(burst_s=10.0), gap=StreamGap(grace_s=0.3))
    watcher = asyncio.create_task(pcm.watch_gaps())
    try:
        _, speech = load_clips()[0]
        # The speech, cut before its trailing silence (a push-to-talk button let go).
        loud = np.flatnonzero(np.abs(speech) > 0.02)
        cut = speech[: int(loud[-1]) + 160]
        for frame in frames(pcm16(cut), 640):
            await pcm.receive(frame)
        stopped = time.monotonic()
        assert any(isinstance(e, SpeechStarted) for _, e in listener.events)
        for _ in range(100):
            ended = [(at, e) for at, e in listener.events if isinstance(e, SpeechEnded)]
            if ended:
                break
            await asyncio.sleep(0.05)
        [(at, event)] = ended
        assert event.reason == "silence"
        # Silence counts from the last frame, and is fed once the grace is over and then
        # as time goes by, until the 500 ms hangover is reached.
        assert 0.3 <= at - stopped <= 1.0
        assert listener.heard > len(cut)  # silence stood in for the rest
        end = listener.arrivals.time_of(event.voiced_end_sample or event.end_sample)
        assert end is not None
        assert end <= stopped + 0.05
    finally:
        watcher.cancel()


async def test_no_silence_is_made_up_when_nobody_speaks() -> None:
    listener = Listener()
    pcm = PcmInput(listener, gap=StreamGap(grace_s=0.1))
    watcher = asyncio.create_task(pcm.watch_gaps())
    try:
        for frame in frames(bytes(16_000), 640):  # half a second of silence, then nothing
            await pcm.receive(frame)
        heard = listener.heard
        await asyncio.sleep(0.6)
        assert listener.heard == heard
        assert listener.events == []
    finally:
        watcher.cancel()
