"""Silero VAD, run from its ONNX file with onnxruntime.

One :class:`SileroModel` per process (an ``InferenceSession`` is safe to call from several
threads); one :class:`SileroStream` per audio stream holds the recurrent state and the
64-sample context that Silero v5+ expects in front of each 512-sample chunk.

:class:`VadBatcher` serves many streams with one ONNX call: a call costs ~115 µs for one
row and ~60 µs per row in a batch of 8 or more, so gathering the chunks that arrive within
a few milliseconds halves the VAD's share of a core per stream. Chunks far below speech
(:data:`SILENT_DBFS`), once a silence has lasted :data:`SETTLE_CHUNKS`, are not sent to the
model at all.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from media import Float32Array
from media.errors import MediaError, ModelLoadError

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512  # 32 ms: the only size Silero accepts at 16 kHz
_CONTEXT_SAMPLES = 64
# Chunks quieter than this (RMS, dB below full scale) are not shown to Silero once the
# silence has lasted SETTLE_CHUNKS: speech from a microphone, even with the browser's gain
# control off, is 20-40 dB above it, while an idle microphone behind the browser's noise
# suppression often sits below it (and a muted one is all zeros). Those chunks are most of a
# session: skipping them saves most of its VAD cost. The first chunks of a silence still go
# to the model: a word's quiet end and the stops inside words dip this low, and Silero's
# judgement of what follows them depends on having seen them; after SETTLE_CHUNKS its state
# has settled on silence and is kept as it is until sound returns.
SILENT_DBFS = -60.0
SETTLE_CHUNKS = 8  # 256 ms
_SILENT_ENERGY = CHUNK_SAMPLES * 10 ** (SILENT_DBFS / 10)  # sum of squares at that RMS


def silero_model_path() -> Path:
    """The ONNX file shipped inside the ``silero-vad`` wheel, found without importing it
    (its ``__init__`` imports torch, which costs seconds and is not needed here)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("silero-vad is not installed: run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelLoadError(f"Silero VAD model missing at {path}: reinstall silero-vad")
    return path


class SileroModel:
    def __init__(self, path: Path | None = None) -> None:
        options = onnxruntime.SessionOptions()
        # Each call is tiny; extra threads only add wake-up latency and contend with Whisper.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(path or silero_model_path()),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load Silero VAD: {exc}") from exc
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(
        self, chunks: Float32Array, state: Float32Array
    ) -> tuple[npt.NDArray[np.float32], Float32Array]:
        """Speech probabilities for a batch of [context + chunk] rows, and the next state."""
        out, next_state = self._session.run(None, {"input": chunks, "state": state, "sr": self._sr})
        return np.asarray(out, dtype=np.float32).reshape(-1), np.asarray(
            next_state, dtype=np.float32
        )

    def stream(self) -> SileroStream:
        return SileroStream(self)


class SileroStream:
    """Per-stream state: feed 512-sample chunks in order, get one probability each."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state: Float32Array = np.zeros((2, 1, 128), dtype=np.float32)
        self._context: Float32Array = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._quiet = 0  # chunks below SILENT_DBFS in a row

    def probability(self, chunk: Float32Array) -> float:
        if self.skip(chunk):
            return 0.0
        probs, state = self._model.run(self.row(chunk).reshape(1, -1), self.state)
        self.advance(chunk, state)
        return float(probs[0])

    def skip(self, chunk: Float32Array) -> bool:
        """Whether ``chunk`` need not be shown to the model (its probability is 0): it is
        below :data:`SILENT_DBFS` after :data:`SETTLE_CHUNKS` such chunks."""
        if chunk.shape != (CHUNK_SAMPLES,):
            raise ValueError(f"Silero needs {CHUNK_SAMPLES} samples, got {chunk.shape}")
        if float(np.dot(chunk, chunk)) >= _SILENT_ENERGY:
            self._quiet = 0
            return False
        self._quiet += 1
        if self._quiet <= SETTLE_CHUNKS:
            return False
        self._context = chunk[-_CONTEXT_SAMPLES:].copy()  # what the model sees next
        return True

    @property
    def state(self) -> Float32Array:
        return self._state

    def row(self, chunk: Float32Array) -> Float32Array:
        """The model's input for ``chunk``: the previous chunk's tail, then the chunk."""
        if chunk.shape != (CHUNK_SAMPLES,):
            raise ValueError(f"Silero needs {CHUNK_SAMPLES} samples, got {chunk.shape}")
        return np.concatenate([self._context, chunk])

    def advance(self, chunk: Float32Array, state: Float32Array) -> None:
        """Take the state the model returned for ``chunk``."""
        self._state = state
        self._context = chunk[-_CONTEXT_SAMPLES:].copy()


class VadBatcher:
    """Probabilities for many streams, batched: the first chunk to arrive starts a short
    window; every chunk that arrives within it (one per stream: each stream awaits its
    answer before sending the next) goes into one ONNX call. Bounded by ``max_batch``,
    beyond which the window closes at once."""

    def __init__(self, model: SileroModel, *, window_s: float = 0.005, max_batch: int = 32):
        self.model = model
        self._window_s = window_s
        self._max_batch = max_batch
        self._pending: list[tuple[SileroStream, Float32Array, asyncio.Future[float]]] = []
        self._timer: asyncio.TimerHandle | None = None

    def stream(self) -> SileroStream:
        return self.model.stream()

    async def probability(self, stream: SileroStream, chunk: Float32Array) -> float:
        if stream.skip(chunk):
            return 0.0
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((stream, chunk, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            rows = np.stack([stream.row(chunk) for stream, chunk, _ in batch])
            states = np.concatenate([stream.state for stream, _, _ in batch], axis=1)
            probs, next_states = self.model.run(rows, states)
        except Exception as exc:  # onnxruntime's own errors, for each waiting stream
            for _, _, future in batch:
                if not future.done():
                    # One exception per stream: a raised exception's traceback belongs to
                    # the one task that raises it.
                    failure = MediaError(f"Silero VAD failed: {type(exc).__name__}: {exc}")
                    failure.__cause__ = exc
                    future.set_exception(failure)
            return
        for i, (stream, chunk, future) in enumerate(batch):
            stream.advance(chunk, next_states[:, i : i + 1, :].copy())
            if not future.done():  # a listener cancelled while waiting has gone
                future.set_result(float(probs[i]))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, future in self._pending:
            future.cancel()
        self._pending = []
