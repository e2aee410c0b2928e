"""Audio out: the reply track, 20 ms frames of 48 kHz audio paced by a clock, silence between
replies.

aiortc's sender calls ``recv()`` in a loop and encodes whatever comes back at once, so the
track itself sets the pace: frame ``n`` is due at ``start + n * 20 ms``. Frames are stereo
because aiortc's Opus encoder works in stereo: a mono frame is upmixed by libswresample at
-3 dB (measured), an interleaved stereo one passes at full level. Over ``/ws`` the same
track is read by ``media.pcm_output``, which waits while there is nothing to say.

Positions are counted in 48 kHz samples since the track began: ``_sent`` samples have gone
out, ``_queued`` more wait. A mark is the span of positions its chunk occupies; it is
started when the first of them goes out in a frame and played when the last has.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import Int16Array
from media.audio import Resampler

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

RATE = 48_000
FRAME = 960  # 20 ms: what aiortc's Opus encoder packetises
FRAME_S = FRAME / RATE
TIME_BASE = fractions.Fraction(1, RATE)
# A consumer later than this re-anchors the schedule instead of bursting frames to catch up:
# a burst would reach the client as a burst, and the time lost is lost either way.
MAX_LAG_S = 2 * FRAME_S
# put() resamples and queues at most this much input at a time, so back-pressure bounds the
# queue even for one huge chunk, and no single step holds the event loop (~0.2 ms each).
PIECE_S = 0.5
MAX_MARKS = 4096  # queued marks; empty chunks add marks without audio for the limit to see


def _ignore(_: object) -> None:
    pass


def _ignore_frame(_: Int16Array) -> None:
    pass


@dataclass(eq=False, slots=True)
class _Mark:
    tag: object
    start: int = 0  # positions, set when the chunk is queued
    end: int = 0
    started: bool = False


class _Stream:
    """A run of audio at one input rate. Its resampler keeps filter state across chunks and
    is delay-compensated (measured: an impulse lands at ``t * 48000 / rate``, and a drained
    stream yields exactly that many samples), so chunk boundaries map to exact positions."""

    def __init__(self, rate: int, base: int) -> None:
        self.rate = rate
        self.base = base  # position of the stream's first sample
        self.taken = 0  # input samples so far
        self._resampler: Resampler | None = None if rate == RATE else Resampler("s16", "mono", RATE)

    def position(self, taken: int) -> int:
        return self.base + (taken * RATE + self.rate // 2) // self.rate

    def resample(self, pcm: Int16Array) -> Int16Array:
        self.taken += len(pcm)
        if self._resampler is None:
            return pcm.copy()  # the caller may reuse its buffer
        if not len(pcm):
            return np.zeros(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate
        return _samples(self._resampler.resample(frame))

    def drain(self) -> Int16Array:
        """The filter's last few samples (it holds back ~16 input samples); ends the stream."""
        resampler, self._resampler = self._resampler, None
        if resampler is None:
            return np.zeros(0, dtype=np.int16)
        return _samples(resampler.resample(None))


def _samples(frames: list[av.AudioFrame]) -> Int16Array:
    parts = [f.to_ndarray().reshape(-1) for f in frames]
    return np.concatenate(parts).astype(np.int16, copy=False) if parts else np.zeros(0, np.int16)


class ReplyAudioTrack(MediaStreamTrack):
    """The gateway's outbound audio track (spoken replies).

    ``put()`` queues mono int16 PCM at any rate; ``recv()`` hands out one 20 ms frame per
    call at its due time: 960 samples, 48 kHz, s16, stereo (both channels equal), ``pts`` =
    ``n * 960`` in 1/48000. Between replies it sends silence.

    Callbacks (attributes; exceptions from them are logged, never raised into aiortc's
    sender, which would end the track): ``on_mark_started(mark)`` when a chunk's first
    sample goes out, ``on_mark_played(mark)`` when its last has, ``on_frame(samples)`` with
    every frame's mono samples, silence included (the echo canceller's far-end reference).
    A frame is reported to ``on_frame`` before the marks it starts or completes.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_buffered_s: float = 20.0,
    ) -> None:
        super().__init__()
        if not max_buffered_s > 0:
            raise ValueError(f"max_buffered_s must be positive, not {max_buffered_s!r}")
        self._clock = clock
        self._sleep = sleep
        self._max_queued = round(max_buffered_s * RATE)
        self._segments: deque[Int16Array] = deque()
        self._head = 0  # samples of the first segment already sent
        self._queued = 0
        self._sent = 0
        self._marks: deque[_Mark] = deque()  # queued, in order
        self._unqueued: list[_Mark] = []  # put() marks not queued yet (pyee owns _waiting)
        self._stream: _Stream | None = None
        self._put_lock = asyncio.Lock()  # chunks queue whole and in call order
        self._epoch = 0  # bumped by flush(): a put() from before it gives up
        self._changed = asyncio.Event()  # room or audio in the queue, a flush, the end
        self._start: float | None = None
        self._frames = 0  # frames handed out so far
        self._expecting = False
        self._last_had_audio = False
        self.underruns = 0
        self._holding = False
        self.on_mark_started: Callable[[object], None] = _ignore
        self.on_mark_played: Callable[[object], None] = _ignore
        self.on_frame: Callable[[Int16Array], None] = _ignore_frame

    @property
    def buffered_s(self) -> float:
        """Seconds of 48 kHz audio queued and not yet sent."""
        return self._queued / RATE

    @property
    def playing(self) -> bool:
        """Audio is queued, or is in the frame handed out last (false after ``flush()``)."""
        return bool(self._queued or self._marks or self._last_had_audio)

    @property
    def last_frame_had_audio(self) -> bool:
        """The frame handed out last carried reply audio, not only silence."""
        return self._last_had_audio

    async def wait_for_audio(self) -> None:
        """Returns once a frame with audio is due to be handed out (or the last one had
        some, and the next closes that run), and the voice is not held; raises
        :class:`MediaStreamError` once the track has ended. For a consumer that, unlike
        aiortc's sender, sends nothing while there is nothing to say (``/ws``)."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.playing and not self._holding:
                return
            self._changed.clear()
            await self._changed.wait()

    def expect_audio(self, on: bool) -> None:
        """While on (a reply is mid-sentence), a frame due with no audio is an underrun."""
        self._expecting = on

    async def put(self, pcm: Int16Array, sample_rate: int, mark: object = None) -> None:
        """Queue mono int16 ``pcm`` at ``sample_rate``; consecutive chunks at one rate are
        resampled as one continuous stream. Waits while more than ``max_buffered_s`` is
        queued. Returns early, queuing no more, if ``flush()`` drops it; raises
        :class:`MediaStreamError` if the track has ended. A ``mark`` of None is not tracked.
        """
        samples = np.asarray(pcm)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(f"expected 1-D int16 PCM, not {samples.ndim}-D {samples.dtype}")
        try:
            rate = operator.index(sample_rate)  # numpy integers too
        except TypeError:
            rate = 0
        if rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, not {sample_rate!r}")
        if self.readyState != "live":
            raise MediaStreamError
        epoch = self._epoch
        entry = None if mark is None else _Mark(mark)
        if entry is not None:
            self._unqueued.append(entry)
        try:
            async with self._put_lock:
                piece = max(1, int(rate * PIECE_S))
                for offset in range(0, max(len(samples), 1), piece):
                    if not await self._wait_for_room(epoch):
                        return
                    stream = self._stream_at(rate)
                    if offset == 0 and entry is not None:
                        entry.start = stream.position(stream.taken)
                        entry.end = stream.position(stream.taken + len(samples))
                        self._unqueued.remove(entry)
                        self._marks.append(entry)
                    self._append(stream.resample(samples[offset : offset + piece]))
                    self._changed.set()  # audio (or a mark) to hand out: wake wait_for_audio
        finally:
            if entry is not None and entry in self._unqueued:  # identity: eq=False
                self._unqueued.remove(entry)

    def flush(self) -> list[object]:
        """Drop everything queued (barge-in): the next frame handed out is silence. Returns
        the marks not fully played, in order; a waiting ``put()`` returns. Also ends
        ``expect_audio``: the reply it was about is gone."""
        dropped = [m.tag for m in self._marks] + [m.tag for m in self._unqueued]
        self._marks.clear()
        self._unqueued.clear()
        self._clear_queue()
        self._epoch += 1
        self._expecting = False
        self._holding = False  # the next reply starts unheld
        self._last_had_audio = False
        self._changed.set()
        return dropped

    def hold(self, on: bool) -> None:
        """Hold the voice (the person may be starting to speak): frames are silence and
        the queue waits, from the next frame; released, it goes on where it was."""
        self._holding = on
        self._changed.set()

    @property
    def holding(self) -> bool:
        return self._holding

    def stop(self) -> None:
        super().stop()
        self._marks.clear()
        self._unqueued.clear()
        self._clear_queue()
        self._changed.set()  # a waiting put() raises

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_until_due()
        if self.readyState != "live":
            raise MediaStreamError
        # Built only now, after the wait, so that a flush() during it silences this frame.
        samples = np.zeros(FRAME, dtype=np.int16)
        filled = 0 if self._holding else self._fill(samples, 0)
        if (
            filled < FRAME
            and not self._holding
            and self._stream is not None
            and not self._put_lock.locked()
        ):
            # Nothing more follows yet: the resampler's tail belongs out now. A later put()
            # starts a new stream; the gap between them is silence anyway.
            self._end_stream()
            filled = self._fill(samples, filled)
        if filled == 0 and self._expecting and not self._holding:
            self.underruns += 1
        self._last_had_audio = filled > 0
        stereo = np.repeat(samples, 2).reshape(1, -1)  # interleaved L, R
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = self._frames * FRAME
        frame.time_base = TIME_BASE
        self._frames += 1
        self._notify(self.on_frame, samples)
        self._fire_marks()
        self._changed.set()  # samples or marks went out: room for a waiting put()
        return frame

    async def _wait_until_due(self) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
            return
        # Due times come from the start and the frame count, so waits never accumulate
        # error and a late frame is followed by on-time ones.
        due = self._start + self._frames * FRAME_S
        if now - due > MAX_LAG_S:
            self._start = now - self._frames * FRAME_S
        elif due > now:
            await self._sleep(due - now)

    async def _wait_for_room(self, epoch: int) -> bool:
        """False if flushed meanwhile; raises if the track ended (aiortc stops it when the
        transport goes, and nothing reads it after that)."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._epoch != epoch:
                return False
            if self._queued <= self._max_queued and len(self._marks) < MAX_MARKS:
                return True
            self._changed.clear()
            await self._changed.wait()

    def _stream_at(self, rate: int) -> _Stream:
        if self._stream is None or self._stream.rate != rate:
            self._end_stream()
            self._stream = _Stream(rate, self._sent + self._queued)
        return self._stream

    def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._append(stream.drain())
        # Rounding may put a mark's end a sample past what the filter gave: clamp to it.
        end = self._sent + self._queued
        for m in self._marks:
            m.start, m.end = min(m.start, end), min(m.end, end)

    def _append(self, samples: Int16Array) -> None:
        if len(samples):
            self._segments.append(samples)
            self._queued += len(samples)

    def _fill(self, out: Int16Array, filled: int) -> int:
        while filled < len(out) and self._segments:
            segment = self._segments[0]
            take = min(len(out) - filled, len(segment) - self._head)
            out[filled : filled + take] = segment[self._head : self._head + take]
            filled += take
            self._head += take
            self._queued -= take
            self._sent += take
            if self._head == len(segment):
                self._segments.popleft()
                self._head = 0
        return filled

    def _clear_queue(self) -> None:
        self._segments.clear()
        self._head = 0
        self._queued = 0
        self._stream = None  # its filter state and tail belong to the dropped audio

    def _fire_marks(self) -> None:
        while self._marks:
            mark = self._marks[0]
            if not mark.started:
                if mark.start >= self._sent and mark.end > self._sent:
                    return
                mark.started = True
                self._notify(self.on_mark_started, mark.tag)
                if not self._marks or self._marks[0] is not mark:
                    continue  # the callback flushed
            if mark.end > self._sent:
                return
            self._marks.popleft()
            self._notify(self.on_mark_played, mark.tag)

    def _notify(self, callback: Callable[[_T], None], arg: _T) -> None:
        try:
            callback(arg)
        except Exception:
            logger.exception("reply track callback %r failed", callback)
