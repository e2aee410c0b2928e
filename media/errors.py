"""Errors of the media layer: speech recognition and the models it loads."""

from __future__ import annotations


class MediaError(Exception):
    code = "media"


class ASRError(MediaError):
    """The speech recogniser failed."""

    code = "asr_failed"


class ASRBusyError(ASRError):
    """Too many utterances are already waiting for the recogniser (retryable)."""

    code = "asr_busy"


class ASRStaleError(ASRError):
    """A transcription was dropped before it started: its deadline passed, or more urgent
    speech needed its place in the queue."""

    code = "asr_stale"


class ASRUnavailable(ASRError):
    """The speech recogniser cannot be reached (a separate ASR service that is down or
    restarting) or did not answer in time (retryable)."""

    code = "asr_unavailable"


class ModelLoadError(ASRError):
    """A model cannot be found, downloaded or converted."""

    code = "asr_model"


class UnsupportedLanguage(ASRError):
    """The loaded model cannot transcribe the language asked for."""

    code = "unsupported_language"


class InvalidAudio(MediaError):
    """An audio file that cannot be decoded, or has no audio in it."""

    code = "invalid_audio"


class AudioTooLong(InvalidAudio):
    """More audio than the recogniser takes in one request."""

    code = "audio_too_long"


class TTSError(MediaError):
    """Speech synthesis failed."""

    code = "tts_failed"


class TTSUnavailable(TTSError):
    """The synthesiser cannot be reached, failed, or took too long (retryable)."""

    code = "tts_unavailable"


class TTSVoiceMissing(TTSError):
    """The voice asked for does not exist or cannot be loaded."""

    code = "tts_voice_missing"


class TurnModelError(MediaError):
    """The end-of-turn model (Smart Turn) cannot be found or loaded."""

    code = "turn_model"
