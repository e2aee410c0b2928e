"""The spoken reply as binary frames (``media/pcm_output.py``), from a real reply track on a
fake clock: 20 ms frames at the session's rate, paced by the track, nothing between
replies or while the voice is held, nothing after a cut, and a rate change from the next
frame on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from media.pcm_output import PcmOutput
from media.playout import ReplyAudioTrack
from tests.test_playout import FakeTime, sine


class Client:
    """What a /ws client receives: each binary frame and the (fake) time it was sent."""

    def __init__(self, fake: FakeTime) -> None:
        self.fake = fake
        self.frames: list[tuple[float, bytes]] = []
        self._sent = asyncio.Condition()

    async def send(self, data: bytes) -> None:
        self.frames.append((self.fake.now, data))
        async with self._sent:
            self._sent.notify_all()

    async def wait_for(self, count: int) -> None:
        async with self._sent:
            await asyncio.wait_for(self._sent.wait_for(lambda: len(self.frames) >= count), 5)

    def samples(self) -> np.ndarray:
        return np.frombuffer(b"".join(d for _, d in self.frames), dtype="<i2")


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakeTime, ReplyAudioTrack, PcmOutput, Client]]:
    fake = FakeTime()
    track = ReplyAudioTrack(clock=fake.clock, sleep=fake.sleep)
    client = Client(fake)
    output = PcmOutput(track, client.send, rate=16_000)
    task = asyncio.create_task(output.run())
    yield fake, track, output, client
    track.stop()
    await asyncio.wait_for(task, 1)  # the track's end ends it


async def idle(track: ReplyAudioTrack) -> None:
    """Until the track has nothing more to hand out (the output then waits, sending nothing)."""
    for _ in range(10_000):
        if not track.playing:
            break
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_reply_goes_out_in_20_ms_frames_at_real_time(
    setup: tuple[FakeTime, ReplyAudioTrack, PcmOutput, Client],
) -> None:
    fake, track, output, client = setup
    start = fake.now
    await track.put(sine(300, 0.2, 48_000), 48_000)
    await idle(track)
    times = [t for t, _ in client.frames]
    sizes = [len(d) for _, d in client.frames]
    # Ten frames of 20 ms, handed out on the track's schedule; the filter's last few
    # samples follow the last one.
    assert times[:10] == pytest.approx([start + 0.02 * n for n in range(10)])
    assert all(size == 640 for size in sizes[1:9])
    assert len(client.samples()) == 3200  # 0.2 s at 16 kHz, every sample
    heard = client.samples()[400:2800].astype(np.float64)
    assert np.sqrt(np.mean(heard**2)) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.02)
    # Between replies nothing is sent, however long it lasts.
    sent = len(client.frames)
    fake.now += 5.0
    await asyncio.sleep(0.05)
    assert len(client.frames) == sent
    assert output.frames_sent == sent


async def test_nothing_goes_out_while_held_or_after_a_cut(
    setup: tuple[FakeTime, ReplyAudioTrack, PcmOutput, Client],
) -> None:
    _, track, _, client = setup
    put = asyncio.create_task(track.put(sine(300, 2.0, 48_000), 48_000))
    await client.wait_for(5)
    track.hold(True)
    await asyncio.sleep(0.02)
    held = len(client.frames)
    assert held <= 6  # the frame in flight at most
    await asyncio.sleep(0.05)
    assert len(client.frames) == held
    track.hold(False)  # goes on where it was
    await client.wait_for(held + 5)
    track.flush()  # barge-in
    cut = len(client.frames)
    await put
    await idle(track)
    # At most the filter's tail (a fraction of a millisecond) after the cut.
    assert len(client.frames) <= cut + 1
    assert sum(len(d) for _, d in client.frames[cut:]) <= 2 * 16


async def test_a_new_rate_applies_from_the_next_frame(
    setup: tuple[FakeTime, ReplyAudioTrack, PcmOutput, Client],
) -> None:
    _, track, output, client = setup
    await track.put(sine(300, 0.1, 48_000), 48_000)
    await idle(track)
    assert len(client.samples()) == 1600
    before = len(client.frames)
    output.set_rate(8_000)
    await track.put(sine(300, 0.1, 48_000), 48_000)
    await idle(track)
    after = [d for _, d in client.frames[before:]]
    assert sum(len(d) for d in after) == 2 * 800  # 0.1 s at 8 kHz
    assert max(len(d) for d in after) == 320  # 20 ms at 8 kHz
