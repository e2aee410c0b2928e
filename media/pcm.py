"""Raw PCM audio over a WebSocket (``/ws``): s16le mono at the session's rate, both ways.
The format and its pure policies; the async adapters are in ``media.pcm_input`` and
``media.pcm_output``.

In::

    binary frame ──pcm_samples (whole samples, ≤ MAX_FRAME_S)──▶ AudioBudget (real time)
        ──PcmDecoder──▶ 16 kHz float32 for the listener;  StreamGap: silence not sent

Out: the reply track's 48 kHz frames ──PcmEncoder──▶ s16le at the session's rate.

A WebSocket has no jitter buffer and no clock of its own: a device sends frames of any
size, in bursts after a stall, or faster than real time if it streams a file. So what
arrives is checked against the wall clock: a stream may run ahead of real time by a small
burst, and beyond that frames are dropped (:class:`AudioBudget`); a stream that stops in the
middle of speech (a push-to-talk button let go) is heard as the silence it is
(:class:`StreamGap`), or the turn would never end.
"""

from __future__ import annotations

import enum

import av
import numpy as np

from media import Float32Array, Int16Array
from media.audio import Resampler
from media.errors import MediaError
from media.vad import SAMPLE_RATE

# One binary frame holds at most this much audio. Devices send 10-100 ms; a second is room
# for a client that sends what it has buffered in one piece, and bounds what one frame costs.
MAX_FRAME_S = 1.0
MAX_RATE = 48_000
MAX_FRAME_BYTES = round(MAX_FRAME_S * MAX_RATE) * 2  # the largest valid frame: 96 000 bytes
# How far a stream may run ahead of real time (a backlog sent at once after a stall), and
# the pace it may keep up: a little over real time, for a device's clock that runs fast
# and for a live stream to win back its burst allowance after a burst.
BURST_S = 2.0
SPEED = 1.05
# A stream that stops is taken to be silent once this long past when its next frame was
# due (its last frame's length after that frame): network jitter up to this is not silence.
GAP_GRACE_S = 0.3


class PcmError(MediaError):
    """A binary frame that is not audio the gateway takes: dropped, and the client told."""

    code = "bad_audio"


class BadAudioFrame(PcmError):
    code = "bad_audio"


class AudioFrameTooLarge(PcmError):
    code = "audio_too_large"


class AudioRateLimited(PcmError):
    """Audio arrives faster than real time beyond the burst allowance (retryable)."""

    code = "rate_limited"


def pcm_samples(data: bytes, rate: int) -> Int16Array:
    """The samples of one binary frame of s16le mono at ``rate``."""
    if len(data) % 2:
        raise BadAudioFrame(
            f"an audio frame of {len(data)} bytes is not whole samples: "
            "audio is 16-bit little-endian mono PCM, 2 bytes a sample"
        )
    count = len(data) // 2
    limit = round(MAX_FRAME_S * rate)
    if count > limit:
        raise AudioFrameTooLarge(
            f"an audio frame of {count} samples ({1000 * count / rate:.0f} ms at {rate} Hz) "
            f"is over the limit of {1000 * MAX_FRAME_S:.0f} ms; send 20-100 ms frames"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


class PcmDecoder:
    """s16le mono at ``rate`` → float32 mono at 16 kHz, for one stream: the resampler keeps
    its filter state from frame to frame, so frame boundaries leave no clicks."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._resampler = None if rate == SAMPLE_RATE else Resampler("flt", "mono", SAMPLE_RATE)

    def decode(self, pcm: Int16Array) -> Float32Array:
        if not len(pcm):
            return np.zeros(0, dtype=np.float32)
        if self._resampler is None:
            out: Float32Array = pcm.astype(np.float32) / np.float32(32768.0)
            return out
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)


class PcmEncoder:
    """48 kHz mono int16 (the reply track's frames) → s16le mono bytes at ``rate``."""

    def __init__(self, rate: int, source_rate: int = MAX_RATE) -> None:
        self.rate = rate
        self._source_rate = source_rate
        self._resampler = None if rate == source_rate else Resampler("s16", "mono", rate)

    def encode(self, samples: Int16Array) -> bytes:
        if self._resampler is None:
            return samples.astype("<i2").tobytes()
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = self._source_rate
        return self._bytes(self._resampler.resample(frame))

    def drain(self) -> bytes:
        """The few samples the filter holds back; the next ``encode`` starts afresh."""
        return b"" if self._resampler is None else self._bytes(self._resampler.resample(None))

    @staticmethod
    def _bytes(frames: list[av.AudioFrame]) -> bytes:
        return b"".join(f.to_ndarray().reshape(-1).astype("<i2").tobytes() for f in frames)


class Verdict(enum.Enum):
    ADMIT = "admit"
    DROP = "drop"  # dropped, in an overload the client has been told of
    OVERLOAD = "overload"  # dropped, the first of an overload: tell the client


class AudioBudget:
    """A token bucket in seconds of audio: a stream may run ``burst_s`` ahead of real time
    and keep up ``speed`` times real time; a frame beyond that is dropped whole. Pure.

    An overload is reported once: its first dropped frame is :attr:`Verdict.OVERLOAD`, the
    rest :attr:`Verdict.DROP`, until the bucket is full again (the client kept to real
    time long enough) and a new overload may begin.
    """

    def __init__(self, burst_s: float = BURST_S, speed: float = SPEED) -> None:
        if not (burst_s > 0 and speed > 0):
            raise ValueError(f"burst_s and speed must be positive, got {burst_s}, {speed}")
        self.burst_s = burst_s
        self.speed = speed
        self._tokens = burst_s
        self._at: float | None = None
        self._overloaded = False
        self.dropped_s = 0.0  # audio refused so far

    @property
    def available_s(self) -> float:
        return self._tokens

    def admit(self, seconds: float, now: float) -> Verdict:
        if self._at is not None:
            refill = max(0.0, now - self._at) * self.speed
            self._tokens = min(self.burst_s, self._tokens + refill)
        self._at = now
        if self._tokens >= self.burst_s:
            self._overloaded = False
        if seconds <= self._tokens:
            self._tokens -= seconds
            return Verdict.ADMIT
        self.dropped_s += seconds
        if self._overloaded:
            return Verdict.DROP
        self._overloaded = True
        return Verdict.OVERLOAD


class StreamGap:
    """How much silence stands in for audio a client stopped sending. Pure.

    A frame of ``d`` seconds that arrives at ``t`` ends at ``t`` (it was captured in real
    time), so the next is due at about ``t + d``. Once ``grace_s`` past that, the stream
    has stopped, and everything since ``t`` is silence owed; after that is filled, more is
    owed as time goes on, until a frame arrives again.
    """

    def __init__(self, grace_s: float = GAP_GRACE_S) -> None:
        self.grace_s = grace_s
        self._end: float | None = None  # where the stream's audio (or silence) reaches
        self._due: float | None = None  # from then on, silence is owed

    def arrived(self, seconds: float, now: float) -> None:
        self._end = now
        self._due = now + seconds + self.grace_s

    def due(self) -> float | None:
        """When silence will be owed if nothing arrives (None before the first frame)."""
        return self._due

    def owed(self, now: float) -> float:
        """Seconds of silence owed now."""
        if self._end is None or self._due is None or now < self._due:
            return 0.0
        return max(0.0, now - self._end)

    def filled(self, now: float) -> None:
        """Silence up to ``now`` has been supplied."""
        self._end = self._due = now
