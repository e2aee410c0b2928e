"""The spoken reply as binary frames (``/ws``): the reply track's 20 ms frames, paced by
the track as for WebRTC, sent as s16le mono at the session's rate.

Only frames that carry the reply are sent: between replies, and while the voice is held
(the person may be starting to speak), nothing goes out, and a client plays silence. A cut
(barge-in, ``cancel``) flushes the track, so the next frame is not sent at all: what the
client still hears is the frame in flight and whatever it buffered itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError

from media.pcm import PcmEncoder
from media.playout import ReplyAudioTrack
from media.vad import SAMPLE_RATE


class PcmOutput:
    def __init__(
        self,
        track: ReplyAudioTrack,
        send: Callable[[bytes], Awaitable[None]],
        *,
        rate: int = SAMPLE_RATE,
    ) -> None:
        self._track = track
        self._send = send
        self.rate = rate
        self.frames_sent = 0

    def set_rate(self, rate: int) -> None:
        """Frames from the next one on are at ``rate``."""
        self.rate = rate

    async def run(self) -> None:
        """Until the track ends (the session's task)."""
        encoder = PcmEncoder(self.rate)
        sending = False  # in a run of frames with audio
        while True:
            try:
                await self._track.wait_for_audio()
                frame = await self._track.recv()
            except MediaStreamError:
                return
            if not self._track.last_frame_had_audio:
                if self._track.holding:
                    continue  # a pause in the run: it goes on where it was, or is cut
                if sending:  # the run ended: what the filter held back belongs to it
                    sending = False
                    await self._out(encoder.drain())
                continue
            if encoder.rate != self.rate:
                await self._out(encoder.drain())
                encoder = PcmEncoder(self.rate)
            if not sending:
                sending = True
                # The frame's events (reply.audio.started) go out first, as a client
                # reading one socket expects: let the session's writer run once.
                await asyncio.sleep(0)
            stereo = frame.to_ndarray().reshape(-1)  # interleaved, both channels equal
            await self._out(encoder.encode(stereo[::2].astype(np.int16, copy=False)))

    async def _out(self, data: bytes) -> None:
        if data:
            self.frames_sent += 1
            await self._send(data)
