"""The ASR server's application: one Whisper model for every gateway worker and replica on
a machine, behind OpenAI's transcription API (``local-ai-gateway asr-server``).

- ``POST /v1/audio/transcriptions``: ``multipart/form-data`` with ``file`` (any audio
  FFmpeg reads, at most :data:`MAX_AUDIO_S`), optional ``language`` and
  ``response_format`` (``json``, ``text``, ``verbose_json``). ``model``, ``prompt`` and
  ``temperature`` are accepted and ignored: this server runs one model, greedily. The
  headers in :mod:`media.asr.wire` say how urgent a job is; without them it is FINAL.
- ``GET /v1/models``: the one model, with its engine, device and languages.
- ``GET /health``: liveness and the queue.

Jobs from every client share one :class:`media.asr.service.ASRService`: one queue by
priority, and on a GPU one batched forward pass for several utterances. A client that
hangs up takes its queued job with it (handler cancellation is on).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.http.headers import loopback_host_middleware
from gateway.http.middleware import Handler, error_middleware, json_error
from gateway.ops.config import AsrDevice, AsrEngineName
from media.asr import wire
from media.asr.base import ASREngine, check_language, default_language
from media.asr.engines import load_engine
from media.asr.service import ASRService, Priority
from media.audio import decode_file
from media.errors import AudioTooLong

logger = logging.getLogger(__name__)

MAX_AUDIO_S = 30.0  # one utterance: what Whisper sees in one window
# 30 s of 48 kHz stereo 32-bit WAV is 11.5 MB; compressed formats are far smaller.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_DEADLINE_MS = 60_000
_PRIORITIES = {p.name.lower(): p for p in Priority}


@dataclass(frozen=True)
class ASRServerSettings:
    engine: AsrEngineName = "openai-whisper"
    model: str = "tiny.en"
    device: AsrDevice = "auto"
    max_pending: int = 32  # jobs queued or running, from every client together
    batch_size: int | None = None  # None: 8 on a GPU, 1 on a CPU
    api_keys: tuple[str, ...] = ()  # if any, the API wants one (Bearer); /health does not


SETTINGS = web.AppKey("asr_settings", ASRServerSettings)
RECOGNISER = web.AppKey("recogniser", ASRService)


def build_asr_app(settings: ASRServerSettings, engine: ASREngine | None = None) -> web.Application:
    """The server's application; ``engine`` (already loaded) is for tests."""
    # Without keys, a page whose DNS name is re-pointed at this machine must not reach it
    # (the Host check); with keys, a request without one is refused anyway.
    guard = _key_middleware if settings.api_keys else loopback_host_middleware
    app = web.Application(client_max_size=MAX_UPLOAD_BYTES, middlewares=[error_middleware, guard])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_recogniser(engine))
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post(wire.PATH, transcriptions)
    return app


@web.middleware
async def _key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``--api-key-file``, the API (not ``/health``) wants one of its keys, as
    OpenAI's does: ``Authorization: Bearer KEY``, compared in constant time."""
    keys = request.app[SETTINGS].api_keys
    if request.path == "/health":
        return await handler(request)
    scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    given = presented.strip().encode("utf-8", "surrogatepass")
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(given, key.encode()) for key in keys
    ):
        return json_error(
            401,
            "unauthorized",
            "this ASR server wants an API key: Authorization: Bearer KEY",
            {"WWW-Authenticate": 'Bearer realm="asr-server"'},
        )
    return await handler(request)


def _recogniser(
    preloaded: ASREngine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = preloaded
        if engine is None:  # seconds of disk and CPU: keep the loop free for signals
            engine = await asyncio.to_thread(
                load_engine, settings.engine, settings.model, settings.device
            )
        logger.info("ASR ready: %s %s on %s", engine.name, engine.model, engine.device)
        app[RECOGNISER] = service = ASRService(
            engine, max_pending=settings.max_pending, batch_size=settings.batch_size
        )
        service.start()
        yield
        await service.close()

    return ctx


async def health(request: web.Request) -> web.Response:
    service = request.app[RECOGNISER]
    return web.json_response(
        {
            "ok": True,
            "pending": service.pending,
            "queue_depth": service.queue_depth,
            "busy_s": round(service.busy_s, 3),  # for the front's admission (capacity)
        }
    )


async def models(request: web.Request) -> web.Response:
    engine = request.app[RECOGNISER].engine
    entry = {
        "id": engine.model,
        "object": "model",
        "created": 0,
        "owned_by": "local-ai-gateway",
        # Beyond OpenAI's fields: what the gateway's client reports and checks against.
        "engine": engine.name,
        "device": engine.device,
        "languages": sorted(engine.languages),
    }
    return web.json_response({"object": "list", "data": [entry]})


async def transcriptions(request: web.Request) -> web.StreamResponse:
    if request.content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return json_error(
            415,
            "unsupported_media_type",
            "send multipart/form-data with the audio as the field 'file'",
        )
    urgency = _urgency(request)  # a bad header is refused before the upload is read
    try:
        form = await request.post()
    except (ValueError, HttpProcessingError) as exc:  # no boundary, a part without a name…
        detail = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise _bad_request(f"the form cannot be read: {detail}") from None
    try:
        return await _transcribe(request, form, *urgency)
    finally:  # aiohttp spools each uploaded file to a temporary file: ours to close
        for value in form.values():
            if isinstance(value, web.FileField):
                value.file.close()


async def _transcribe(
    request: web.Request, form: Mapping[str, object], priority: Priority, deadline_s: float | None
) -> web.StreamResponse:
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise _bad_request("the form has no file: send the audio as the field 'file'")
    response_format = _field(form.get("response_format")) or "json"
    if response_format not in wire.RESPONSE_FORMATS:
        raise _bad_request(
            f"response_format {response_format!r} is not supported here: "
            f"use one of {', '.join(wire.RESPONSE_FORMATS)}"
        )
    service = request.app[RECOGNISER]
    language = _field(form.get("language")) or None
    check_language(language, service.engine.languages, service.engine.model)
    data = await asyncio.to_thread(upload.file.read)  # up to megabytes, from a temporary file
    audio = wire.decode_plain_wav(data)
    if audio is None:  # another format: FFmpeg decodes it, off the loop
        audio = await asyncio.to_thread(decode_file, data, MAX_AUDIO_S)
    elif len(audio) > MAX_AUDIO_S * wire.SAMPLE_RATE:
        raise AudioTooLong(f"more than {MAX_AUDIO_S:g} s of audio in one request")
    result = await service.transcribe(audio, language, priority=priority, deadline_s=deadline_s)
    if response_format == "text":
        return web.Response(text=result.text)
    return web.json_response(
        wire.transcription_to_json(
            result,
            response_format=response_format,
            language=default_language(service.engine.languages, language),
            duration_s=len(audio) / wire.SAMPLE_RATE,
        )
    )


def _urgency(request: web.Request) -> tuple[Priority, float | None]:
    """The job's priority and deadline from the request's headers (see media.asr.wire)."""
    name = request.headers.get(wire.PRIORITY_HEADER, "final").strip().lower()
    priority = _PRIORITIES.get(name)
    if priority is None:
        raise _bad_request(
            f"{wire.PRIORITY_HEADER}: expected one of {', '.join(_PRIORITIES)}, got {name!r}"
        )
    deadline = request.headers.get(wire.DEADLINE_HEADER)
    if deadline is None:
        return priority, None
    try:
        deadline_ms = int(deadline)
    except ValueError:
        deadline_ms = 0
    if not 1 <= deadline_ms <= MAX_DEADLINE_MS:
        raise _bad_request(
            f"{wire.DEADLINE_HEADER}: expected milliseconds from 1 to {MAX_DEADLINE_MS}, "
            f"got {deadline!r}"
        )
    return priority, deadline_ms / 1000


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=message)  # the error middleware gives it our shape


def _field(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
