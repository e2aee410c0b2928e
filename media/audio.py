"""Audio in: decoded frames (s16: 48 kHz stereo from aiortc, 16 kHz mono from the gateway's
own receive path) → 16 kHz mono float32 → fixed-size chunks."""

from __future__ import annotations

import errno
import io
from collections import deque
from typing import cast

import av
import av.filter
import numpy as np

from media import Float32Array
from media.errors import AudioTooLong, InvalidAudio
from media.vad import CHUNK_SAMPLES, SAMPLE_RATE

_SQRT_HALF = 0.7071067811865476
_S16_SCALE = np.float32(1 / 32768)


class Resampler:
    """``av.AudioResampler``'s conversion (an FFmpeg ``aformat`` graph, with the
    libswresample stage FFmpeg inserts), on a graph that runs on the calling thread.

    FFmpeg gives a filter graph a pool of one thread per core unless told otherwise, and
    PyAV's resampler does not tell it: every stream held that many idle threads, and kept
    them until the garbage collector reached the stream's objects (the soak benchmark saw
    the gateway's threads grow by two per session). One per stream: it keeps filter state.
    """

    def __init__(self, format: str, layout: str, rate: int) -> None:
        self._format = format
        self._layout = layout
        self._rate = rate
        self._graph: av.filter.Graph | None = None
        self._source: tuple[str, str, int] | None = None

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """What the filter has ready after ``frame``. ``None`` drains the samples it holds
        back and ends the stream; input in another format starts a new one."""
        if frame is None:
            graph, self._graph = self._graph, None
            if graph is None:
                return []
            graph.push(None)
            return _pull(graph)
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._graph is None or source != self._source:
            self._graph, self._source = self._build(frame), source
        self._graph.push(frame)
        return _pull(self._graph)

    def _build(self, frame: av.AudioFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        graph.threads = 1  # before any filter is added, or FFmpeg has started its pool
        extra = {} if frame.time_base is None else {"time_base": str(frame.time_base)}
        source = graph.add(
            "abuffer",
            sample_rate=str(frame.sample_rate),
            sample_fmt=frame.format.name,
            channel_layout=frame.layout.name,
            **extra,
        )
        convert = graph.add(
            "aformat",
            sample_rates=str(self._rate),
            sample_fmts=self._format,
            channel_layouts=self._layout,
        )
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        return graph


def _pull(graph: av.filter.Graph) -> list[av.AudioFrame]:
    frames: list[av.AudioFrame] = []
    while True:
        try:
            frames.append(cast(av.AudioFrame, graph.pull()))
        except EOFError:
            return frames
        except av.FFmpegError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            return frames


class MonoResampler:
    """Any aiortc frame → float32 mono at ``rate``; one per stream."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self._rate = rate
        self._resampler = Resampler("flt", "mono", rate)
        self._stereo = False

    def resample(self, frame: av.AudioFrame) -> Float32Array:
        if (
            frame.sample_rate == self._rate
            and frame.format.name == "s16"
            and frame.layout.nb_channels == 1
        ):
            # Already mono at our rate (the gateway's receive path decodes Opus straight to
            # it): a conversion, no filter. s16 → float as FFmpeg's aformat does it.
            pcm = frame.to_ndarray().reshape(-1)
            return np.multiply(pcm, _S16_SCALE, dtype=np.float32)
        # aiortc's pts count RTP time; a jump (packet loss, a new track) makes libswresample
        # try to compensate. Resampling by content alone keeps the stream continuous.
        frame.pts = None
        self._stereo = frame.layout.nb_channels == 2
        return self._samples(self._resampler.resample(frame))

    def drain(self) -> Float32Array:
        """The samples the filter still holds (the end of a file); the stream ends."""
        return self._samples(self._resampler.resample(None))

    def _samples(self, frames: list[av.AudioFrame]) -> Float32Array:
        out = [f.to_ndarray().reshape(-1) for f in frames]
        if not out:
            return np.zeros(0, dtype=np.float32)
        samples = np.concatenate(out).astype(np.float32, copy=False)
        if self._stereo:
            # libswresample downmixes stereo as (L+R)/sqrt(2): a mono microphone (aiortc
            # decodes it as two equal channels) would come out 3 dB hot and could clip.
            # Scaling by 1/sqrt(2) makes it the plain average (L+R)/2.
            samples *= np.float32(_SQRT_HALF)
        return samples


def decode_file(data: bytes, max_seconds: float, rate: int = SAMPLE_RATE) -> Float32Array:
    """An uploaded audio file (any container and codec FFmpeg reads: WAV, FLAC, MP3,
    Ogg/Opus, WebM…) as mono float32 at ``rate``. Blocking. Raises :class:`InvalidAudio`,
    or :class:`AudioTooLong` past ``max_seconds`` (decoding stops there)."""
    limit = int(max_seconds * rate)
    pieces: list[Float32Array] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise InvalidAudio("the file has no audio stream")
            resampler = MonoResampler(rate)
            for frame in container.decode(stream):
                if not isinstance(frame, av.AudioFrame):
                    continue
                pieces.append(resampler.resample(frame))
                total += len(pieces[-1])
                if total > limit:
                    raise AudioTooLong(f"more than {max_seconds:g} s of audio in one request")
            pieces.append(resampler.drain())
    except av.FFmpegError as exc:
        raise InvalidAudio(f"cannot decode the audio: {exc}") from exc
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if len(samples) > limit:
        raise AudioTooLong(f"more than {max_seconds:g} s of audio in one request")
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
