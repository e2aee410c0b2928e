"""The async adapter that feeds a client's PCM frames (``/ws`` binary frames) into the
session's :class:`media.listener.AudioListener`: the same VAD, endpointer and turns as a
WebRTC track, with the checks and pacing of ``media.pcm`` in front.

Nothing queues here: a frame is checked, paced and heard before the next is read (the
WebSocket reader waits meanwhile, and TCP pushes back on the client), and the budget drops
whatever runs too far ahead of real time. When a client stops sending in the middle of
speech, :meth:`PcmInput.watch_gaps` feeds the silence it left, so the turn ends as it
would had the device kept sending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from media.listener import AudioListener, DropLog
from media.pcm import (
    AudioBudget,
    AudioRateLimited,
    PcmDecoder,
    StreamGap,
    Verdict,
    pcm_samples,
)
from media.vad import SAMPLE_RATE

logger = logging.getLogger(__name__)

# How often a stopped stream's silence is fed while speech may be in progress.
GAP_TICK_S = 0.1


def _ignore() -> None:
    pass


class PcmInput:
    """One stream of s16le mono frames at :attr:`rate` into ``listener``. ``receive`` runs
    on the connection's reader; ``watch_gaps`` is a task of the session."""

    def __init__(
        self,
        listener: AudioListener,
        *,
        rate: int = SAMPLE_RATE,
        budget: AudioBudget | None = None,
        gap: StreamGap | None = None,
        on_frame: Callable[[], None] = _ignore,
        clock: Callable[[], float] = time.monotonic,
        log_prefix: str = "",
    ) -> None:
        self.listener = listener
        self._decoder = PcmDecoder(rate)
        self.budget = budget or AudioBudget()
        self._gap = gap or StreamGap()
        self._on_frame = on_frame
        self._clock = clock
        self._prefix = log_prefix
        self._drops = DropLog(logger, "audio frame", log_prefix)
        # The reader and the gap watcher both feed the listener, whose chunker and
        # endpointer take one stream in order.
        self._feeding = asyncio.Lock()

    @property
    def rate(self) -> int:
        return self._decoder.rate

    def set_rate(self, rate: int) -> None:
        """Frames from now on are at ``rate`` (the stream goes on at 16 kHz; the old
        resampler's last millisecond is dropped)."""
        if rate != self._decoder.rate:
            self._decoder = PcmDecoder(rate)

    async def receive(self, data: bytes) -> None:
        """Hear one binary frame. Raises :class:`media.pcm.PcmError` for a frame the client
        must hear about (it is dropped; the stream goes on); other failures drop it too,
        logged without a traceback per frame (:class:`media.listener.DropLog`)."""
        now = self._clock()
        pcm = pcm_samples(data, self.rate)
        if not len(pcm):
            return
        seconds = len(pcm) / self.rate
        verdict = self.budget.admit(seconds, now)
        if verdict is Verdict.OVERLOAD:
            logger.warning("%saudio faster than real time: dropping frames", self._prefix)
            raise AudioRateLimited(
                "audio is arriving faster than real time: frames beyond "
                f"{self.budget.burst_s:.0f} s ahead are dropped until it slows to real time"
            )
        if verdict is Verdict.DROP:
            return
        self._on_frame()
        async with self._feeding:
            try:
                samples = self._decoder.decode(pcm)
                self._gap.arrived(seconds, now)
                # A frame's samples arrived at a real-time pace ending now: the clock maps
                # each to now less the rest of the frame, as for a WebRTC frame.
                await self.listener.hear(samples, now)
            except Exception:  # a bug with one frame must not end the session
                self._drops.dropped()
            else:
                self._drops.passed()

    async def watch_gaps(self) -> None:
        """Feed the silence of a stream that stopped while speech may be in progress."""
        while True:
            due, now = self._gap.due(), self._clock()
            # Wake when silence falls due, then every tick while it is being fed.
            await asyncio.sleep(
                GAP_TICK_S if due is None or due <= now else min(due - now, GAP_TICK_S)
            )
            now = self._clock()
            owed = self._gap.owed(now)
            if not owed or not self.listener.endpointer.hearing:
                continue  # nothing is in progress that silence would end
            async with self._feeding:
                if self._gap.owed(now) != owed:
                    continue  # a frame arrived meanwhile
                self._gap.filled(now)
                silence = np.zeros(round(owed * SAMPLE_RATE), dtype=np.float32)
                try:
                    await self.listener.hear(silence, now)
                except Exception:  # as for a frame: the stream goes on
                    self._drops.dropped()
                else:
                    self._drops.passed()
