"""Smart Turn v3: does the speaker sound finished? An audio-only end-of-turn model.

The model (BSD-2, by Daily) is a Whisper-tiny-sized encoder with a classifier head, run from
its ONNX file with onnxruntime. It ships inside the ``pipecat-ai`` wheel; the file is found
without importing pipecat (whose ``__init__`` needs packages this gateway does not install),
or given with ``--turn-model``.

Its input is the last 8 s of 16 kHz mono audio (zero-padded at the start when shorter) as
Whisper-style log-mel features: the waveform normalised to zero mean and unit variance, an
STFT with a 400-sample periodic Hann window every 160 samples (centred, reflect-padded),
power through an 80-band Slaney mel filterbank, ``log10``, clamped to 8 below its maximum,
then ``(x + 4) / 4``: 80 x 800. The output is a sigmoid probability that the turn is over.

A call costs tens of milliseconds of CPU: run :meth:`SmartTurn.predict` in a worker thread.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from media import Float32Array
from media.errors import TurnModelError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 8 * SAMPLE_RATE  # the model hears the last 8 s
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 800
COMPLETE_THRESHOLD = 0.5  # above: the turn is complete

_MODEL_IN_PIPECAT = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
_NORM_EPS = 1e-7  # transformers' zero_mean_unit_var_norm
_MEL_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest bin (80 dB)

Float64Array = npt.NDArray[np.float64]


def find_turn_model(explicit: Path | None) -> Path | None:
    """``explicit`` if given (it must be a file), else the model inside an installed
    ``pipecat-ai``, else None (end-of-turn detection then stays off)."""
    if explicit is not None:
        path = explicit.expanduser()
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise TurnModelError(f"--turn-model {str(path)!r} {problem}")
        return path
    spec = importlib.util.find_spec("pipecat")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*_MODEL_IN_PIPECAT)
        if path.is_file():
            return path
    return None


def last_window(audio: Float32Array) -> Float32Array:
    """The last 8 s of ``audio``, zero-padded at the start when shorter."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"Smart Turn needs mono audio, got shape {audio.shape}")
    if audio.size >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - audio.size, dtype=np.float32), audio])


def _hz_to_mel(hz: Float64Array) -> Float64Array:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    linear = hz * (3.0 / 200.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: Float64Array) -> Float64Array:
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> Float64Array:
    """Triangular filters on the Slaney mel scale from 0 Hz to Nyquist, each scaled to unit
    area (Slaney normalisation), as librosa and Whisper build them: ``(n_mels, n_fft/2+1)``."""
    edges_mel = np.linspace(
        0.0, float(_hz_to_mel(np.array(sample_rate / 2.0))), n_mels + 2, dtype=np.float64
    )
    edges = _mel_to_hz(edges_mel)  # lower edge, centre, upper edge of each band
    bins = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    area = 2.0 / (edges[2:] - edges[:-2])
    filters: Float64Array = triangles * area[:, None]
    return filters


def hann_window(length: int = N_FFT) -> Float64Array:
    """The periodic Hann window (as ``torch.hann_window``), not numpy's symmetric one."""
    n = np.arange(length, dtype=np.float64)
    window: Float64Array = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)
    return window


def whisper_log_mel(
    audio: Float32Array,
    filters: Float64Array | None = None,
    window: Float64Array | None = None,
) -> npt.NDArray[np.float32]:
    """Smart Turn's input features for the last 8 s of ``audio`` (16 kHz mono): float32,
    ``(80, 800)``. Pass ``filters`` (:func:`mel_filterbank`) and ``window``
    (:func:`hann_window`) to avoid rebuilding them on every call."""
    if filters is None:
        filters = mel_filterbank()
    if window is None:
        window = hann_window()
    x = last_window(audio)
    # Zero mean, unit variance over the whole window (padding included), in float32 as
    # transformers' WhisperFeatureExtractor does it before its float64 spectrogram.
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(_NORM_EPS))

    half = N_FFT // 2
    padded = np.pad(x.astype(np.float64), half, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // HOP_LENGTH  # 801: one more than the model takes
    starts = np.arange(n_frames - 1) * HOP_LENGTH  # the last frame is dropped, as Whisper does
    frames = padded[starts[:, None] + np.arange(N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (800, 201)

    log_mel: Float64Array = np.log10(np.maximum(filters @ power.T, _MEL_FLOOR))  # (80, 800)
    log_mel = np.maximum(log_mel, log_mel.max() - _DYNAMIC_RANGE)
    features: npt.NDArray[np.float32] = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return features


class SmartTurn:
    """One loaded model. :meth:`predict` blocks for tens of milliseconds; call it from one
    worker thread at a time (onnxruntime itself allows concurrent calls, but each would
    take the same cores)."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = path
        options = onnxruntime.SessionOptions()
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        self._filters = mel_filterbank()
        self._window = hann_window()
        started = time.perf_counter()
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            # One call at load: the first real one is then as fast as the rest, and a file
            # that loads but is not this model fails here rather than mid-conversation.
            self.predict(np.zeros(SAMPLE_RATE, dtype=np.float32))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            problem = " ".join(str(exc).split())[:300]  # one line, whatever it printed
            raise TurnModelError(
                f"--turn-model {str(path)!r} cannot be loaded as Smart Turn v3: {problem}"
            ) from exc
        logger.info(
            "Smart Turn model %s loaded in %.0f ms",
            path.name,
            (time.perf_counter() - started) * 1e3,
        )

    def features(self, audio: Float32Array) -> npt.NDArray[np.float32]:
        return whisper_log_mel(audio, self._filters, self._window)

    def predict(self, audio: Float32Array) -> float:
        """The probability that the speaker has finished their turn, judged from the last 8 s
        of ``audio`` (16 kHz mono float32); above :data:`COMPLETE_THRESHOLD` means done."""
        features = self.features(audio)[None, :, :]
        (out,) = self._session.run(None, {"input_features": features})
        return float(np.asarray(out).reshape(-1)[0])
