"""Silero VAD, run from its ONNX file with onnxruntime.

One :class:`SileroModel` per process (an ``InferenceSession`` is safe to call from several
threads); one :class:`SileroStream` per audio stream holds the recurrent state and the
64-sample context that Silero v5+ expects in front of each 512-sample chunk.

:class:`VadBatcher` serves many streams with one ONNX call: a call costs ~115 µs for one
row and ~60 µs per row in a batch of 8 or more, so gathering the chunks that arrive within
a few milliseconds halves the VAD's share of a core per stream.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from media import Float32Array
from media.errors import ModelLoadError

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512  # 32 ms: the only size Silero accepts at 16 kHz
_CONTEXT_SAMPLES = 64


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

    def probability(self, chunk: Float32Array) -> float:
        probs, state = self._model.run(self.row(chunk).reshape(1, -1), self.state)
        self.advance(chunk, state)
        return float(probs[0])

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
        except Exception as exc:  # onnxruntime's own errors; each waiting stream gets it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
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
