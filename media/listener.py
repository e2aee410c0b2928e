"""The async adapter that drains an inbound audio track into the endpointer; audio that
comes on no track (PCM over ``/ws``: ``media.pcm_input``) goes in through :meth:`hear`.

An unread aiortc track queues decoded frames without bound (measured: +39 MB in 30 s), so
a listener reads every frame from the moment the track arrives, even when nobody wants
the audio yet. Silero runs on the loop, batched across streams by :class:`VadBatcher`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import Float32Array
from media.audio import Chunker, MonoResampler, SampleClock
from media.echo import EchoCanceller
from media.endpointer import Endpointer, EndpointerEvent, EndpointerSettings
from media.vad import VadBatcher

logger = logging.getLogger(__name__)

# aiortc's audio jitter buffer (rtcrtpreceiver.py: JitterBuffer(capacity=16, prefetch=4))
# releases a frame only once the 4th after it has arrived: every frame reaches recv() about
# 4 frames after the client sent it. The arrival clock takes that out, so that "end of
# speech" is when the client sent it, as a person would time it.
JITTER_PREFETCH_FRAMES = 4
# A failure that persists drops every frame (50 a second): its traceback is logged once,
# then a count this often (10 s of 20 ms frames) and when frames pass again.
DROP_SUMMARY_EVERY = 500


class DropLog:
    """Says why frames are being dropped without a traceback per frame: the first of a run
    of failures is logged with its traceback, the rest are counted."""

    def __init__(self, log: logging.Logger, what: str, prefix: str = "") -> None:
        self._log = log
        self._what = what  # "audio frame": the thing dropped, singular
        self._prefix = prefix
        self.run = 0  # failures in a row

    def dropped(self) -> None:
        """Call from the ``except`` block that dropped it."""
        self.run += 1
        if self.run == 1:
            self._log.exception("%s%s dropped", self._prefix, self._what)
        elif self.run % DROP_SUMMARY_EVERY == 0:
            self._log.warning("%s%d %ss dropped in a row", self._prefix, self.run, self._what)

    def passed(self) -> None:
        if self.run > 1:
            self._log.warning(
                "%s%ss pass again after %d dropped in a row", self._prefix, self._what, self.run
            )
        self.run = 0


class AudioListener:
    def __init__(
        self,
        vad: VadBatcher,
        settings: EndpointerSettings,
        on_event: Callable[[EndpointerEvent], None],
        *,
        on_frame: Callable[[int], None] = lambda lost: None,
        on_probability: Callable[[float], None] = lambda p: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resampler = MonoResampler(settings.sample_rate)
        self._chunker = Chunker()
        self._vad = vad
        self._stream = vad.stream()
        self.endpointer = Endpointer(settings)
        self._on_event = on_event
        self._on_frame = on_frame
        self._on_probability = on_probability  # each chunk's, as Silero gives it
        self._next_pts: int | None = None
        self._clock = clock
        self._received = 0  # samples of the 16 kHz stream so far
        self.arrivals = SampleClock(settings.sample_rate)  # stream position → arrival time
        # Removes the gateway's own voice from the microphone when it speaks: set once the
        # session's canceller is ready (microphone audio before then passes as it is).
        self.echo: EchoCanceller | None = None
        self._drops = DropLog(logger, "audio frame")

    async def run(self, track: MediaStreamTrack) -> None:
        """Reads until the track ends; an utterance in progress is then delivered."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if not isinstance(frame, av.AudioFrame):
                continue  # aiortc yields packets only for pass-through codecs
            try:
                lost = self._count_lost(frame)
                self._on_frame(lost)
                samples = self._resampler.resample(frame)
                if lost and self.echo is not None:
                    # The canceller pairs microphone and reply audio by count: a gap it is
                    # not told about would put it out of step for good.
                    self.echo.near_end_lost(lost * len(samples))
                held = JITTER_PREFETCH_FRAMES * frame.samples / frame.sample_rate
                await self.hear(samples, self._clock() - held)
            except Exception:
                # Keep reading whatever went wrong with one frame: a track nobody reads
                # buffers without bound.
                self._drops.dropped()
            else:
                self._drops.passed()
        for event in self.endpointer.flush():
            self._on_event(event)

    async def hear(self, samples: Float32Array, arrived: float) -> None:
        """The next ``samples`` of the stream (mono float32 at the endpointer's rate), the
        last of which arrived at ``arrived``: the seam for audio that comes on no track."""
        self._received += len(samples)
        # What the endpointer sees at a position went through the canceller, which delays
        # it by a constant: that position arrived this much earlier.
        delay = self.echo.latency_samples if self.echo is not None else 0
        self.arrivals.mark(self._received + delay, arrived)
        await self.feed(samples)

    def _count_lost(self, frame: av.AudioFrame) -> int:
        """Frames missing before this one, from the gap in its RTP timestamp (aiortc sets
        pts to the RTP timestamp; the jitter buffer skips what never arrived)."""
        pts, size = frame.pts, frame.samples
        if pts is None or size <= 0:
            return 0
        lost = 0
        if self._next_pts is not None and pts > self._next_pts:
            lost = (pts - self._next_pts) // size
        self._next_pts = pts + size
        return lost

    async def feed(self, samples: Float32Array) -> None:
        if self.echo is not None:
            samples = self.echo.near_end(samples)
        for chunk in self._chunker.push(samples):
            probability = await self._vad.probability(self._stream, chunk)
            self._on_probability(probability)
            for event in self.endpointer.process(chunk, probability):
                self._on_event(event)
