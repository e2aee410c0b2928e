"""The interface every speech recogniser implements, and what it returns.

Engines are synchronous and blocking (Whisper holds the CPU or GPU for the whole call);
:class:`media.asr.service.ASRService` runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from media import Float32Array
from media.errors import UnsupportedLanguage


@dataclass(frozen=True)
class Segment:
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcription:
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class ModelInfo(Protocol):
    """What a recogniser is: what the gateway reports and checks languages against."""

    @property
    def name(self) -> str:  # "openai-whisper" | "faster-whisper" | what a server says
        ...

    @property
    def model(self) -> str:  # what the user asked for: a model name or a path
        ...

    @property
    def device(self) -> str:  # "cpu" | "cuda" | "remote" (a server that does not say)
        ...

    @property
    def languages(self) -> frozenset[str]:  # the codes the model can transcribe
        ...


class ASREngine(ModelInfo, Protocol):
    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        """Transcribe 16 kHz mono float32 audio of at most 30 s. Blocking."""
        ...

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        """Transcribe several utterances (each at most 30 s) in one pass of the model: one
        result per utterance, in order, each what :meth:`transcribe` would give. Blocking.
        An engine without a batched path may loop (see :func:`transcribe_each`)."""
        ...


def transcribe_each(
    engine: ASREngine, audios: Sequence[Float32Array], language: str | None
) -> list[Transcription]:
    """``transcribe_batch`` as a loop: for engines (and fakes) with no batched path."""
    return [engine.transcribe(audio, language) for audio in audios]


def resolve_device(requested: str) -> str:
    """``auto`` means CUDA when torch can see a GPU."""
    if requested != "auto":
        return requested
    import torch  # deferred: importing torch costs about a second

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_language(languages: frozenset[str], language: str | None) -> str | None:
    # An English-only model accepts nothing else; skipping detection saves a pass.
    if language:
        return language
    return "en" if languages == {"en"} else None


def check_language(language: str | None, languages: frozenset[str], model: str) -> None:
    """Raise :class:`UnsupportedLanguage` unless the model can transcribe ``language``
    (None: detect it, which every model can). No ``languages`` (a remote server that does
    not list them): the server decides."""
    if language is None or language in languages or not languages:
        return
    if languages == {"en"}:
        raise UnsupportedLanguage(
            f"model {model} is English-only and cannot transcribe {language!r}; "
            "use a multilingual model (for example --asr-model small) for other languages"
        )
    raise UnsupportedLanguage(
        f"{language!r} is not a language model {model} knows; "
        f"use a Whisper language code such as {', '.join(sorted(languages)[:8])}"
    )
