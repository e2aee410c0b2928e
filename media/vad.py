"""Silero VAD, run from its ONNX file with onnxruntime.

One :class:`SileroModel` per process (an ``InferenceSession`` is safe to call from several
threads); one :class:`SileroStream` per audio stream holds the recurrent state and the
64-sample context that Silero v5+ expects in front of each 512-sample chunk.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from gateway.errors import ModelLoadError

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512  # 32 ms: the only size Silero accepts at 16 kHz
_CONTEXT_SAMPLES = 64

Float32Array = npt.NDArray[np.float32]


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
        if chunk.shape != (CHUNK_SAMPLES,):
            raise ValueError(f"Silero needs {CHUNK_SAMPLES} samples, got {chunk.shape}")
        row = np.concatenate([self._context, chunk]).reshape(1, -1)
        probs, self._state = self._model.run(row, self._state)
        self._context = chunk[-_CONTEXT_SAMPLES:].copy()
        return float(probs[0])
