"""An OpenAI-compatible speech server for tests and benchmarks, speaking with a real voice.

``POST /v1/audio/speech`` with ``{"model", "input", "voice", "response_format": "pcm"}``
answers ``200`` with ``audio/pcm``: raw 16-bit little-endian mono at 24 kHz, OpenAI's
"pcm", streamed as it is made. The voice is Piper's (resampled from its 22050 Hz with PyAV)
or any :class:`media.tts.base.TTSEngine` passed in; it runs in one worker thread, so the
server never blocks the loop it shares with a test. Errors are OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for a bad body or format, 404 for
an unknown model or voice.

A test steers it through the :class:`SpeechServerState` it gets back: a delay before the
first byte (a model loading), a pause between chunks, an HTTP error, or a stall after
some audio; and reads what it was asked from ``state.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import av
from aiohttp import web

from media.asr.engines import default_cache_dir
from media.tts.base import TTSEngine
from media.tts.piper import PiperEngine

Mode = Literal["normal", "http_error", "stall"]

HOST = "127.0.0.1"  # never reachable from another machine
PCM_RATE = 24000  # OpenAI's "pcm"
_POLL_S = 0.02  # how often a waiting handler checks whether its client is still there
_SHUTDOWN_TIMEOUT_S = 2.0


@dataclass
class SpeechServerState:
    """What the server does, changeable while it runs; and what it was asked.

    ``mode`` applies to requests that start after it is set: "http_error" answers
    ``error_status`` with ``error_message`` before any audio; "stall" sends
    ``stall_after_bytes`` of audio, then nothing until the client leaves, the server stops
    or ``stall_max_s`` passes, then cuts the connection.
    """

    voices: list[str] = field(default_factory=lambda: ["alloy", "joe"])  # all one voice
    models: list[str] = field(default_factory=lambda: ["tts-1", "piper"])
    first_byte_delay_s: float = 0.0  # before the response headers
    chunk_bytes: int = 4800  # 100 ms of audio per write
    chunk_interval_s: float = 0.0  # between writes
    mode: Mode = "normal"
    error_status: int = 500
    error_message: str = "synthesis backend crashed"
    stall_after_bytes: int = 4800
    stall_max_s: float = 30.0
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <it>"
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))
    calls: Counter[str] = field(default_factory=Counter)  # "POST /v1/audio/speech" → count
    active_streams: int = 0
    completed_streams: int = 0  # streams that sent all their audio
    client_disconnects: int = 0  # streams whose client left before the end


SPEECH_STATE = web.AppKey("speech_state", SpeechServerState)
_ENGINE = web.AppKey("speech_engine", TTSEngine)
_POOL = web.AppKey("speech_pool", ThreadPoolExecutor)
_STOPPING = web.AppKey("speech_stopping", asyncio.Event)


def pcm_24k(engine: TTSEngine, text: str) -> Generator[bytes, None, None]:
    """``text`` spoken as OpenAI's "pcm" bytes, chunk by chunk. Blocking."""
    chunks = engine.synthesize(text)
    if engine.sample_rate == PCM_RATE:
        for chunk in chunks:
            yield chunk.astype("<i2").tobytes()
        return
    resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
    for chunk in chunks:
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = engine.sample_rate
        yield _pcm_bytes(resampler.resample(frame))
    yield _pcm_bytes(resampler.resample(None))  # the resampler's buffered tail


def _pcm_bytes(frames: list[av.AudioFrame]) -> bytes:
    return b"".join(f.to_ndarray().reshape(-1).astype("<i2").tobytes() for f in frames)


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def _wait(request: web.Request, seconds: float) -> bool:
    """Sleeps ``seconds``; False at once if the server is stopping or the client left."""
    stopping = request.app[_STOPPING]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, 0.0)
    while not (stopping.is_set() or _client_gone(request)):
        left = deadline - loop.time()
        if left <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(left, _POLL_S))
    return False


def _cut(request: web.Request) -> None:
    # No chunked terminator: the client sees an incomplete body, as when a server dies.
    if request.transport is not None:
        request.transport.close()


async def _speech(request: web.Request) -> web.StreamResponse:
    state = request.app[SPEECH_STATE]
    state.calls[f"{request.method} {request.path}"] += 1
    if state.api_key is not None and request.headers.get("Authorization") != (
        f"Bearer {state.api_key}"
    ):
        return _error(401, "invalid API key", code="invalid_api_key")
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"invalid JSON body: {exc}")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    state.requests.append(body)
    text, model, voice = body.get("input"), body.get("model"), body.get("voice")
    if not isinstance(text, str) or not text.strip():
        return _error(400, "input must be a non-empty string", "input")
    if model not in state.models:
        return _error(404, f"model {model!r} not found", "model", "model_not_found")
    if voice not in state.voices:
        return _error(404, f"voice {voice!r} not found", "voice", "voice_not_found")
    if body.get("response_format", "mp3") != "pcm":
        return _error(400, "this server only streams response_format pcm", "response_format")
    mode = state.mode  # fixed for this request, whatever the test changes meanwhile
    if mode == "http_error":
        return _error(state.error_status, state.error_message)
    if not await _wait(request, state.first_byte_delay_s):
        _cut(request)
        return web.Response()  # never reaches the client: the connection is gone
    return await _stream(request, state, mode, text)


async def _stream(
    request: web.Request, state: SpeechServerState, mode: Mode, text: str
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    pool = request.app[_POOL]
    audio = pcm_24k(request.app[_ENGINE], text)
    step = max(state.chunk_bytes // 2 * 2, 2)  # whole samples per write
    response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    sent, finished, client_left = 0, False, False

    def abandon() -> web.StreamResponse:
        nonlocal client_left
        client_left = _client_gone(request)
        _cut(request)
        return response

    state.active_streams += 1
    try:
        await response.prepare(request)

        def stalling() -> bool:
            return mode == "stall" and sent >= state.stall_after_bytes

        while not stalling():
            pcm = await loop.run_in_executor(pool, next, audio, None)
            if pcm is None:
                break
            for start in range(0, len(pcm), step):
                if stalling():
                    break
                if sent and not await _wait(request, state.chunk_interval_s):
                    return abandon()
                await response.write(pcm[start : start + step])
                sent += len(pcm[start : start + step])
        if mode == "stall":  # even when all the audio fitted before the stall point
            await _wait(request, state.stall_max_s)
            return abandon()
        await response.write_eof()
        finished = True
        return response
    except ConnectionError:  # the client left while we wrote
        client_left = True
        return response
    finally:
        with contextlib.suppress(RuntimeError):  # the pool is gone: so is the generator
            pool.submit(audio.close)  # after any next() still running: one worker
        state.active_streams -= 1
        state.completed_streams += finished
        state.client_disconnects += client_left


def make_app(
    state: SpeechServerState | None = None, engine: TTSEngine | None = None
) -> web.Application:
    """The application alone; with no ``engine`` it loads the bundled Piper voice at
    startup (about half a second, in a worker thread)."""
    app = web.Application()
    app[SPEECH_STATE] = state if state is not None else SpeechServerState()
    app[_STOPPING] = asyncio.Event()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if engine is None:
            app[_ENGINE] = await asyncio.to_thread(PiperEngine, None, cache_dir=default_cache_dir())
        else:
            app[_ENGINE] = engine
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speech-server")
        app[_POOL] = pool
        yield
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=False)

    async def wake_waiters(app: web.Application) -> None:
        app[_STOPPING].set()  # before the runner waits on open handlers: stalls end now

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(wake_waiters)
    app.router.add_post("/v1/audio/speech", _speech)
    return app


@contextlib.asynccontextmanager
async def speech_server(
    state: SpeechServerState | None = None, engine: TTSEngine | None = None, port: int = 0
) -> AsyncIterator[tuple[SpeechServerState, str]]:
    """``async with speech_server() as (state, url): ...`` on 127.0.0.1; ``url`` is the
    base (``http://127.0.0.1:PORT``), as the gateway's ``--tts-url`` takes it."""
    app = make_app(state, engine)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        yield app[SPEECH_STATE], f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
