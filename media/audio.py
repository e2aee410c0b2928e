"""Audio in: aiortc frames (48 kHz stereo s16) → 16 kHz mono float32 → fixed-size chunks."""

from __future__ import annotations

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
