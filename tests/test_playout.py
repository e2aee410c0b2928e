"""Audio out (``media/playout.py``): the reply track hands out 20 ms frames at 48 kHz on a
clock's schedule, resamples what it is given, reports marks, and stops on barge-in. Pacing
is checked exactly with a fake clock whose sleep advances it; one test sends over real
WebRTC between two aiortc peers."""

from __future__ import annotations

import asyncio
import contextlib
import fractions

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import Int16Array
from media.playout import FRAME, RATE, ReplyAudioTrack

FRAME_S = FRAME / RATE
EPS = 1e-9


class FakeTime:
    """A clock that only moves when the track sleeps (or the test says so)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is


def make_track(fake: FakeTime, **kwargs: float) -> ReplyAudioTrack:
    return ReplyAudioTrack(clock=fake.clock, sleep=fake.sleep, **kwargs)


class Recorder:
    """Every frame's samples and every mark event, with the index of the frame it came in
    (the track reports a frame to ``on_frame`` before the marks that frame completes)."""

    def __init__(self, track: ReplyAudioTrack) -> None:
        self.frames: list[Int16Array] = []
        self.events: list[tuple[int, str, object]] = []
        track.on_frame = self.frames.append
        track.on_mark_started = lambda m: self.events.append((len(self.frames) - 1, "started", m))
        track.on_mark_played = lambda m: self.events.append((len(self.frames) - 1, "played", m))

    def played(self) -> list[object]:
        return [m for _, kind, m in self.events if kind == "played"]


def sine(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def mono(frame: av.AudioFrame) -> Int16Array:
    """Left channel, after checking the frame is what aiortc's Opus encoder wants."""
    assert frame.format.name == "s16"
    assert frame.layout.name == "stereo"
    assert frame.sample_rate == RATE
    assert frame.samples == FRAME
    assert frame.time_base == fractions.Fraction(1, RATE)
    pcm = frame.to_ndarray().reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], pcm[:, 1])
    return np.asarray(pcm[:, 0], dtype=np.int16)


async def settle() -> None:
    """Lets woken tasks (a put() waiting for room) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def frames(track: ReplyAudioTrack, count: int) -> list[Int16Array]:
    return [mono(await track.recv()) for _ in range(count)]


def dominant_frequency(samples: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# Pacing


async def test_frames_are_due_every_20_ms_never_early_and_never_drift() -> None:
    fake = FakeTime()
    track = make_track(fake)
    start = fake.now
    for n in range(200):
        frame = await track.recv()
        assert fake.now >= start + n * FRAME_S - EPS  # never early
        assert fake.now == pytest.approx(start + n * FRAME_S, abs=EPS)
        assert frame.pts == n * FRAME
        fake.now += 0.013  # the consumer's own work: the track waits only for the rest
    assert fake.sleeps[1:] == pytest.approx([FRAME_S - 0.013] * 198, abs=EPS)


async def test_a_long_stall_re_anchors_instead_of_bursting() -> None:
    fake = FakeTime()
    track = make_track(fake)
    await frames(track, 5)
    fake.now += 1.0  # the sender was held up for 50 frames' worth
    stalled_at = fake.now
    times = []
    for _ in range(10):
        frame = await track.recv()
        times.append(fake.now)
    immediate = sum(1 for t in times if t == stalled_at)
    assert immediate <= 2
    # Then a steady 20 ms from the new anchor, and pts carries on without a gap.
    assert np.diff(times[immediate - 1 :]) == pytest.approx(FRAME_S, abs=EPS)
    assert frame.pts == 14 * FRAME


async def test_a_short_delay_is_caught_up_on_the_original_schedule() -> None:
    fake = FakeTime()
    track = make_track(fake)
    start = fake.now
    await frames(track, 3)
    fake.now += 0.030  # within the tolerance: frame 3 goes at once, frame 4 on time
    for n in range(3, 10):
        await track.recv()
        assert fake.now == pytest.approx(max(start + n * FRAME_S, start + 0.070), abs=EPS)


# Content


async def test_silence_when_idle() -> None:
    fake = FakeTime()
    track = make_track(fake)
    seen: list[Int16Array] = []
    track.on_frame = seen.append
    for n in range(5):
        frame = await track.recv()
        assert frame.pts == n * FRAME
        assert not mono(frame).any()
    assert len(seen) == 5
    assert all(s.dtype == np.int16 and s.shape == (FRAME,) and not s.any() for s in seen)
    assert not track.playing
    assert track.buffered_s == 0


@pytest.mark.parametrize("rate", [22_050, 24_000, 16_000, 48_000])
async def test_audio_at_any_rate_comes_out_at_48_khz_unchanged(rate: int) -> None:
    fake = FakeTime()
    track = make_track(fake)
    log = Recorder(track)
    await track.put(sine(440, 1.0, rate), rate, mark="a")
    out = np.concatenate(await frames(track, 60)).astype(np.float64)
    # Duration: the mark is played in the frame holding sample 48000 (index 49), ±1.
    [(started, _, _), (played, _, _)] = log.events
    assert started == 0
    assert abs(played - 49) <= 1
    loud = np.flatnonzero(np.abs(out) > 100)
    assert abs((loud[-1] + 1 - loud[0]) - RATE) <= FRAME
    # Content: the same sine at 48 kHz, in place (no delay), at the same level.
    ideal = 0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    middle = slice(2_000, RATE - 2_000)
    assert np.corrcoef(out[middle], ideal[middle])[0, 1] > 0.999
    assert np.sqrt(np.mean(out[middle] ** 2)) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.01)
    assert dominant_frequency(out[:RATE], RATE) == pytest.approx(440, abs=1.5)
    assert not out[RATE + FRAME :].any()  # then silence


async def test_chunks_of_one_stream_join_without_a_seam() -> None:
    fake = FakeTime()
    track = make_track(fake)
    signal = sine(440, 1.0, 22_050)
    for chunk in np.array_split(signal, 7):  # as TTS delivers sentences
        await track.put(chunk, 22_050)
    out = np.concatenate(await frames(track, 50)).astype(np.float64)
    ideal = 0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    # Sample-exact apart from resampling error everywhere, seams included.
    assert np.max(np.abs(out[50:-50] - ideal[50:-50])) < 0.01 * 32767


async def test_a_rate_change_flushes_the_previous_stream_tail() -> None:
    fake = FakeTime()
    track = make_track(fake)
    await track.put(sine(440, 0.5, 22_050), 22_050, mark="first")
    await track.put(sine(440, 0.5, 24_000), 24_000, mark="second")
    # The first stream was drained whole; the second holds its last few samples back.
    assert track.buffered_s == pytest.approx(1.0, abs=0.001)
    log = Recorder(track)
    await frames(track, 52)
    # 24000 samples each, so "first" ends with frame 24 and "second" starts with frame 25.
    assert log.events == [
        (0, "started", "first"),
        (24, "played", "first"),
        (25, "started", "second"),
        (49, "played", "second"),
    ]
    assert all(f.any() for f in log.frames[:50])
    assert not any(f.any() for f in log.frames[50:])


# Marks


async def test_marks_fire_in_order_in_the_frames_that_carry_them() -> None:
    fake = FakeTime()
    track = make_track(fake)
    log = Recorder(track)
    tone = sine(440, 1.0, RATE)
    await track.put(tone[:1440], RATE, mark="A")  # samples [0, 1440)
    await track.put(tone[:960], RATE, mark="B")  # [1440, 2400)
    await track.put(tone[:100], RATE, mark="C")  # [2400, 2500)
    await track.put(tone[:0], RATE, mark="D")  # empty, at 2500
    await track.put(tone[:500], RATE)  # untagged
    assert track.playing
    await frames(track, 4)
    assert log.events == [
        (0, "started", "A"),
        (1, "played", "A"),
        (1, "started", "B"),
        (2, "played", "B"),
        (2, "started", "C"),
        (2, "played", "C"),
        (2, "started", "D"),
        (2, "played", "D"),
    ]


async def test_a_failing_callback_does_not_break_the_track() -> None:
    fake = FakeTime()
    track = make_track(fake)

    def boom(_: object) -> None:
        raise RuntimeError("callback bug")

    track.on_mark_started = boom
    track.on_frame = boom
    await track.put(sine(440, 0.1, RATE), RATE, mark="x")
    assert len(await frames(track, 3)) == 3


# Barge-in


async def test_flush_silences_the_next_frame_and_returns_unplayed_marks() -> None:
    fake = FakeTime()
    track = make_track(fake)
    log = Recorder(track)
    track.expect_audio(True)
    await track.put(sine(440, 0.04, RATE), RATE, mark="done")  # two frames
    await track.put(sine(440, 1.0, RATE), RATE, mark="partial")
    await track.put(sine(440, 1.0, RATE), RATE, mark="not started")
    heard = await frames(track, 3)
    assert all(f.any() for f in heard)
    assert log.played() == ["done"]

    assert track.flush() == ["partial", "not started"]
    assert not track.playing
    assert track.buffered_s == 0
    after = await frames(track, 3)
    assert not any(f.any() for f in after)
    assert log.played() == ["done"]
    assert track.underruns == 0  # flush ends the reply it was expecting

    await track.put(sine(440, 0.02, RATE), RATE, mark="next")  # the track plays on
    assert (await frames(track, 1))[0].any()
    assert log.played() == ["done", "next"]


async def test_hold_silences_from_the_next_frame_and_keeps_the_place() -> None:
    fake = FakeTime()
    track = make_track(fake)
    track.expect_audio(True)
    tone = sine(440, 0.1, RATE)  # five frames
    await track.put(tone, RATE, mark="piece")
    first = await frames(track, 2)
    track.hold(True)  # someone may be starting to speak
    held = await frames(track, 3)
    assert not any(f.any() for f in held)
    assert track.underruns == 0  # holding is not running dry
    track.hold(False)  # it was a cough: go on exactly where it stopped
    rest = await frames(track, 3)
    assert np.array_equal(np.concatenate(first + rest), tone)
    track.hold(True)
    track.flush()  # a barge-in: the next reply starts unheld
    assert not track.holding


async def test_flush_during_the_wait_for_a_frame_silences_that_frame() -> None:
    fake = FakeTime()
    gate = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        fake.now += seconds
        await gate.wait()

    track = ReplyAudioTrack(clock=fake.clock, sleep=held_sleep)
    await track.put(sine(440, 1.0, RATE), RATE, mark="reply")
    assert mono(await track.recv()).any()
    pending = asyncio.ensure_future(track.recv())  # now waiting for frame 1's due time
    await settle()
    assert track.flush() == ["reply"]
    gate.set()
    assert not mono(await pending).any()


async def test_flush_releases_a_put_waiting_for_room() -> None:
    fake = FakeTime()
    track = make_track(fake, max_buffered_s=0.1)
    await track.put(sine(440, 0.2, RATE), RATE, mark="queued")
    blocked = asyncio.ensure_future(track.put(sine(440, 0.2, RATE), RATE, mark="waiting"))
    await settle()
    assert not blocked.done()
    assert track.flush() == ["queued", "waiting"]
    await asyncio.wait_for(blocked, 1)
    assert track.buffered_s == 0  # nothing of it was queued after the flush
    assert not any(f.any() for f in await frames(track, 2))


async def test_a_cancelled_put_leaves_nothing_behind() -> None:
    fake = FakeTime()
    track = make_track(fake, max_buffered_s=0.1)
    await track.put(sine(440, 0.2, RATE), RATE, mark="queued")
    blocked = asyncio.ensure_future(track.put(sine(440, 0.2, RATE), RATE, mark="cancelled"))
    await settle()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert track.buffered_s == pytest.approx(0.2)
    assert track.flush() == ["queued"]


# Back-pressure and the end


async def test_put_waits_while_more_than_max_buffered_is_queued() -> None:
    fake = FakeTime()
    track = make_track(fake, max_buffered_s=0.1)
    await track.put(sine(440, 0.2, RATE), RATE)  # room at the start: queued whole
    blocked = asyncio.ensure_future(track.put(sine(440, 0.2, RATE), RATE))
    await settle()
    assert not blocked.done()
    await frames(track, 4)  # 0.12 s left
    await settle()
    assert not blocked.done()
    await frames(track, 1)  # 0.1 s left: no longer more than the limit
    await settle()
    assert blocked.done()
    assert track.buffered_s == pytest.approx(0.3)


async def test_one_huge_chunk_is_queued_piece_by_piece() -> None:
    fake = FakeTime()
    track = make_track(fake, max_buffered_s=0.1)
    putting = asyncio.ensure_future(track.put(sine(440, 3.0, 24_000), 24_000, mark="long"))
    most = 0.0
    out = []
    while not putting.done():
        await settle()
        most = max(most, track.buffered_s)
        out.extend(await frames(track, 1))
    out.extend(await frames(track, round(track.buffered_s / FRAME_S) + 2))
    assert most <= 0.1 + 0.5 + FRAME_S  # the limit plus one piece
    audio = np.concatenate(out).astype(np.float64)
    assert abs(len(np.flatnonzero(np.abs(audio) > 100)) - 3 * RATE) < 0.01 * 3 * RATE
    assert dominant_frequency(audio[: 3 * RATE], RATE) == pytest.approx(440, abs=1)


async def test_stop_ends_recv_and_put() -> None:
    fake = FakeTime()
    track = make_track(fake, max_buffered_s=0.1)
    await track.put(sine(440, 0.2, RATE), RATE)
    blocked = asyncio.ensure_future(track.put(sine(440, 0.2, RATE), RATE))
    await settle()
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(blocked, 1)
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(MediaStreamError):
        await track.put(sine(440, 0.2, RATE), RATE)
    assert track.readyState == "ended"
    assert track.buffered_s == 0


async def test_put_rejects_what_is_not_mono_int16_pcm() -> None:
    track = make_track(FakeTime())
    with pytest.raises(ValueError, match="int16"):
        await track.put(np.zeros(100, dtype=np.float32), 16_000)
    with pytest.raises(ValueError, match="1-D"):
        await track.put(np.zeros((100, 2), dtype=np.int16), 16_000)
    with pytest.raises(ValueError, match="sample_rate"):
        await track.put(np.zeros(100, dtype=np.int16), 0)
    with pytest.raises(ValueError, match="max_buffered_s"):
        ReplyAudioTrack(max_buffered_s=0)


# Metrics and the echo reference


async def test_underruns_count_only_while_expecting_audio() -> None:
    fake = FakeTime()
    track = make_track(fake)
    await frames(track, 3)
    assert track.underruns == 0
    track.expect_audio(True)
    await track.put(sine(440, 1.5 * FRAME_S, RATE), RATE)
    full, partial, *empty = await frames(track, 4)
    assert np.count_nonzero(full) > FRAME - 10
    assert partial[: FRAME // 2].any()
    assert not partial[FRAME // 2 :].any()
    assert not any(e.any() for e in empty)
    assert track.underruns == 2  # the frames due with nothing at all
    track.expect_audio(False)
    await frames(track, 3)
    assert track.underruns == 2


async def test_on_frame_sees_every_frame_as_sent() -> None:
    fake = FakeTime()
    track = make_track(fake)
    seen: list[Int16Array] = []
    track.on_frame = seen.append
    await track.put(sine(440, 0.05, 24_000), 24_000)
    sent = await frames(track, 6)
    assert len(seen) == 6
    for mine, theirs in zip(sent, seen, strict=True):
        assert theirs.dtype == np.int16
        assert np.array_equal(mine, theirs)
    assert any(s.any() for s in seen)
    assert not seen[-1].any()


async def test_playing_while_audio_is_queued_or_in_the_last_frame() -> None:
    fake = FakeTime()
    track = make_track(fake)
    assert not track.playing
    await track.put(sine(440, 0.1, RATE), RATE)
    assert track.playing
    assert track.buffered_s == pytest.approx(0.1)
    await frames(track, 5)
    assert track.buffered_s == 0
    assert track.playing  # the last frame held audio
    await frames(track, 1)
    assert not track.playing


# Over real WebRTC


async def test_the_reply_is_heard_by_a_real_webrtc_peer() -> None:
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = ReplyAudioTrack()
    try:
        sender.addTrack(track)
        arrived: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        receiver.on("track", arrived.set_result)
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        remote = await asyncio.wait_for(arrived, 5)

        done = asyncio.Event()
        track.on_mark_played = lambda _: done.set()
        putting = asyncio.ensure_future(track.put(sine(440, 1.0, 24_000), 24_000, mark="r"))
        decoded: list[npt.NDArray[np.float64]] = []

        async def listen() -> None:
            while True:
                frame = await remote.recv()
                assert isinstance(frame, av.AudioFrame)
                assert frame.sample_rate == RATE
                decoded.append(frame.to_ndarray().reshape(-1, 2)[:, 0].astype(np.float64))

        listening = asyncio.ensure_future(listen())
        await asyncio.wait_for(done.wait(), 8)
        await asyncio.sleep(0.3)  # the receiver's jitter buffer holds ~80 ms
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await putting
    finally:
        await sender.close()
        await receiver.close()

    audio = np.concatenate(decoded)
    loud = np.flatnonzero(np.abs(audio) > 0.1 * 32767)
    assert loud.size, "no audio arrived"
    heard = audio[loud[0] : loud[-1] + 1]
    assert len(heard) == pytest.approx(RATE, abs=4 * FRAME)  # about 1 s, through Opus
    assert dominant_frequency(heard, RATE) == pytest.approx(440, abs=3)
    rms = np.sqrt(np.mean(heard**2))
    assert rms == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.1)  # full level (stereo)
