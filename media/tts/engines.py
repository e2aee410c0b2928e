"""Choosing and loading a speech synthesiser by name."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from media.asr.engines import default_cache_dir
from media.errors import TTSError, TTSUnavailable
from media.tts.base import TTSEngine
from media.tts.openai import OpenAISpeechEngine
from media.tts.piper import PiperEngine

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "tts-1"  # OpenAI's names; compatible servers map or accept them
DEFAULT_OPENAI_VOICE = "alloy"


def piper_available() -> bool:
    """Whether Piper is installed, without importing it (that loads onnxruntime)."""
    return importlib.util.find_spec("piper") is not None


def load_tts_engine(
    name: str,
    *,
    voice: str | None,
    url: str | None,
    model: str | None,
    cache_dir: Path | None,
    timeout_s: float = 30.0,
    api_key: str | None = None,
) -> TTSEngine | None:
    """``"none"`` → None (no spoken replies). Blocking (Piper loads its voice, maybe
    downloads it): call it from a worker thread when an event loop is running."""
    if name == "none":
        return None
    logger.info("loading TTS engine %s with voice %s", name, voice or "(default)")
    if name == "piper":
        return PiperEngine(voice, cache_dir=cache_dir or default_cache_dir())
    if name == "openai":
        if not url:
            raise TTSUnavailable(
                "the openai TTS engine needs the speech server's address: pass --tts-url"
            )
        return OpenAISpeechEngine(
            url,
            model or DEFAULT_OPENAI_MODEL,
            voice or DEFAULT_OPENAI_VOICE,
            timeout_s=timeout_s,
            api_key=api_key,
        )
    raise TTSError(f"unknown TTS engine {name!r}: use piper, openai or none")
