"""Audio in: aiortc frames (48 kHz stereo s16) → 16 kHz mono float32 → fixed-size chunks."""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from media import Float32Array
from media.vad import CHUNK_SAMPLES, SAMPLE_RATE

_SQRT_HALF = 0.7071067811865476


class MonoResampler:
    """Wraps ``av.AudioResampler``; one per stream, since it keeps filter state."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

    def resample(self, frame: av.AudioFrame) -> Float32Array:
        # aiortc's pts count RTP time; a jump (packet loss, a new track) makes libswresample
        # try to compensate. Resampling by content alone keeps the stream continuous.
        frame.pts = None
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(out).astype(np.float32, copy=False)
        if frame.layout.nb_channels == 2:
            # libswresample downmixes stereo as (L+R)/sqrt(2): a mono microphone (aiortc
            # decodes it as two equal channels) would come out 3 dB hot and could clip.
            # Scaling by 1/sqrt(2) makes it the plain average (L+R)/2.
            samples *= np.float32(_SQRT_HALF)
        return samples


class Chunker:
    """Re-cuts a stream of arbitrary-length arrays into ``size``-sample chunks, in order."""

    def __init__(self, size: int = CHUNK_SAMPLES) -> None:
        self._size = size
        self._pending: Float32Array = np.zeros(0, dtype=np.float32)

    def push(self, samples: Float32Array) -> list[Float32Array]:
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = len(data) // self._size * self._size
        chunks = [data[i : i + self._size] for i in range(0, whole, self._size)]
        self._pending = data[whole:].copy()
        return chunks


class SampleClock:
    """When each position of a stream arrived (``time.monotonic`` seconds), so that timings
    can start at the end of speech itself rather than at the endpointer's decision, which
    comes a hangover later. Pure: the caller marks each frame's end and its arrival time.

    A sample is taken to have arrived when the frame that ends with it did, less the rest
    of that frame: what a client played at a steady pace arrives at that pace.
    """

    def __init__(self, rate: int = SAMPLE_RATE, horizon_frames: int = 3000) -> None:
        self._rate = rate
        self._marks: deque[tuple[int, float]] = deque(maxlen=horizon_frames)  # (end, at)

    def mark(self, end_sample: int, at: float) -> None:
        self._marks.append((end_sample, at))

    def time_of(self, sample: int) -> float | None:
        """None before any frame has arrived."""
        if not self._marks:
            return None
        end, at = self._marks[-1]
        if end < sample:
            return at  # not arrived yet as far as we know: the latest arrival
        for earlier_end, earlier_at in reversed(self._marks):
            if earlier_end < sample:
                break  # the previous mark was the first frame that holds the sample
            end, at = earlier_end, earlier_at
        return at - (end - sample) / self._rate
