"""The aiohttp application: what hangs off it (typed keys) and how it is built and torn down.

Everything with a lifetime — the ASR engine and its worker thread, the VAD model, the
session registry — is made in ``cleanup_ctx`` and closed in reverse on shutdown, which also
closes every peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
from aiohttp import web

from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.llm import LLMSettings, OllamaChat
from gateway.conversation.resume import Conversations, ConversationTokens, ParkedHistories
from gateway.errors import ConfigError, IcePolicyError
from gateway.http.admission import Measure, sampling
from gateway.http.auth import load_api_keys, setup_auth
from gateway.http.cors import cors_middleware
from gateway.http.drain import Drain
from gateway.http.headers import loopback_host_middleware, security_headers_middleware
from gateway.http.middleware import error_middleware
from gateway.http.relay import setup_turn
from gateway.http.routes import add_routes
from gateway.http.state import (
    ASR,
    CLIENT_SESSIONS,
    CONFIG,
    CONVERSATIONS,
    DRAIN,
    ECHO_WARM_UP,
    ICE_POLICY,
    LLM,
    METRICS,
    OFFER_LIMITER,
    SESSIONS,
    TTS,
    TURN_JUDGE,
    VAD,
)
from gateway.http.worker import setup_worker
from gateway.ops.capacity import Usage
from gateway.ops.config import Config, is_loopback, service_hostname
from gateway.ops.exposure import exposed_on, local_addresses, ollama_port
from gateway.ops.metrics import ASRMetrics, Metrics, watch_loop
from media import Int16Array
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from media.asr.remote import RemoteASR, parse_asr_url
from media.asr.service import ASRService
from media.errors import TurnModelError
from media.smart_turn import SmartTurn, find_turn_model
from media.tts.base import TTSEngine
from media.tts.engines import load_tts_engine, piper_available
from media.tts.service import TTSService
from media.vad import SileroModel, VadBatcher
from signalling.audio_receiver import check_support
from signalling.ice import IcePolicy, check_policy
from signalling.limits import ConcurrencyLimiter, RateLimiter
from signalling.offer import MAX_BODY_BYTES
from signalling.registry import SessionRegistry, new_session_id

logger = logging.getLogger(__name__)

# Histories kept for reconnecting clients, per allowed session: enough for every session to
# drop and come back a few times within the window, never more.
RESUMABLE_PER_SESSION = 4


def build_app(
    config: Config, *, engine: ASREngine | None = None, tts: TTSEngine | None = None
) -> web.Application:
    """``engine`` and ``tts`` let tests share loaded models across many apps (``tts`` then
    replaces what ``--tts-engine`` would load)."""
    # Outermost first: security headers on every answer, CORS on every answer including
    # converted errors (so a front end on another origin can read them), then errors, then
    # authentication (appended by setup_auth), which refuses before any handler runs.
    middlewares = [security_headers_middleware, cors_middleware(config.cors_origins)]
    if not config.tls:
        middlewares.insert(0, loopback_host_middleware)
    app = web.Application(
        middlewares=[*middlewares, error_middleware],
        client_max_size=MAX_BODY_BYTES,  # the offer is the largest body
    )
    app[CONFIG] = config
    app[METRICS] = metrics = Metrics()
    app[OFFER_LIMITER] = RateLimiter(rate_per_minute=config.offer_rate, burst=config.offer_rate)
    app[CLIENT_SESSIONS] = ConcurrencyLimiter(config.sessions_per_client)
    app[DRAIN] = Drain()
    app[CONVERSATIONS] = Conversations(
        # Made here, never stored: tokens end with the process, as the histories do.
        ConversationTokens(
            secrets.token_bytes(32), lifetime_s=config.max_session_s + config.resume_window_s
        ),
        ParkedHistories(
            limit=RESUMABLE_PER_SESSION * config.max_sessions, window_s=config.resume_window_s
        ),
        # Named like a session id (after the worker, if any), so that the front of media
        # workers sends a reconnect to the worker that holds the history.
        new_id=lambda: new_session_id(worker=config.worker_id),
    )
    # Before aiohttp waits for handlers: a WebSocket handler ends only when its session does.
    app.on_shutdown.append(_close_sessions)
    app[ICE_POLICY] = policy = IcePolicy(config.ice_addresses, config.udp_ports)
    if policy.active:
        try:
            addresses = check_policy(policy)
        except IcePolicyError as exc:  # an unknown interface or address, a bad range
            raise ConfigError(exc.flag, exc.detail) from exc
        logger.info(
            "WebRTC media only on %s, UDP ports %s",
            ", ".join(addresses) or "every address",
            f"{policy.ports[0]}-{policy.ports[1]}" if policy.ports else "chosen by the OS",
        )
    check_support()  # says once, at start-up, when lost audio cannot be concealed here
    if config.worker_socket is None:
        setup_auth(app, config)
    else:  # a media worker: the front authenticates; --auth still says whether it does
        setup_worker(app)
    setup_turn(app, config)  # reads --turn-secret-file now, as auth reads its key files
    # The voice first: a missing voice file stops start-up before seconds of model loading.
    app.cleanup_ctx.append(_speech(tts))
    app.cleanup_ctx.append(_models(engine))
    app.cleanup_ctx.append(_llm)
    app.cleanup_ctx.append(_sessions)
    if config.worker_socket is None:  # in a worker, the front admits
        app.cleanup_ctx.append(sampling(_usage(app), metrics.registry))
    app.cleanup_ctx.append(loop_watch_context(metrics))
    add_routes(app)
    return app


def _models(
    engine: ASREngine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        service: ASRService | RemoteASR
        if config.asr_url and engine is None:
            service = RemoteASR(
                parse_asr_url(config.asr_url), model=config.asr_model, api_key=asr_api_key(config)
            )
            await service.start()
            logger.info("ASR: the server at %s", service.endpoint)
        else:
            loaded = engine
            if loaded is None:
                # Seconds of disk and CPU: keep the loop free (signals, other start-up work).
                loaded = await asyncio.to_thread(
                    load_engine, config.asr_engine, config.asr_model, config.asr_device
                )
            logger.info("ASR ready: %s %s on %s", loaded.name, loaded.model, loaded.device)
            service = ASRService(loaded, observer=ASRMetrics(app[METRICS]))
            app[METRICS].asr_queue_depth.set_function(lambda: service.queue_depth)
        app[ASR] = service
        app[METRICS].asr_pending.set_function(lambda: service.pending)
        app[VAD] = vad = VadBatcher(await asyncio.to_thread(SileroModel))
        app[TURN_JUDGE] = judge = await asyncio.to_thread(load_turn_judge, config)
        yield
        vad.close()
        await service.close()
        await judge.close()

    return ctx


def asr_api_key(config: Config) -> str | None:
    """The key for ``--asr-url``'s server, from ``--asr-api-key-file`` (its first key)."""
    return _first_key(config.asr_api_key_file, "--asr-api-key-file")


def _first_key(path: Path | None, flag: str) -> str | None:
    return None if path is None else load_api_keys(path, flag)[0]


def load_configured_tts(config: Config) -> TTSEngine | None:
    """The TTS engine the configuration names, loaded (``none``: None). Blocking: a voice
    loads, or downloads the first time its name is used."""
    return load_tts_engine(
        tts_engine_name(config),
        voice=config.tts_voice,
        url=config.tts_url,
        model=config.tts_model,
        cache_dir=None,
        api_key=_first_key(config.tts_api_key_file, "--tts-api-key-file"),
    )


def load_turn_judge(config: Config) -> TurnJudge:
    """What decides the end of a turn. Blocking (loads the model). A ``--turn-model`` that
    is missing or corrupt raises :class:`media.errors.TurnModelError` naming the flag."""
    explicit = find_turn_model(config.turn_model) if config.turn_model else None
    if config.turn_detection in ("fixed", "text"):
        return TurnJudge(config.turn_detection)
    path = explicit or find_turn_model(None)
    if path is None:
        if config.turn_detection == "model":
            raise TurnModelError(
                "--turn-model: no Smart Turn model found; pass the .onnx file with "
                "--turn-model PATH, install pipecat-ai (make setup does), or use "
                "--turn-detection text"
            )
        logger.info("end of turn: the transcript decides (no turn model; see --turn-model)")
        return TurnJudge("text")
    judge = TurnJudge(config.turn_detection, SmartTurn(path))
    logger.info("end of turn: the transcript and the Smart Turn model at %s decide", path)
    return judge


def tts_engine_name(config: Config) -> str:
    """``auto``: Piper when it is installed (the optional ``tts`` extra), else none."""
    if config.tts_engine == "auto":
        return "piper" if piper_available() else "none"
    return config.tts_engine


def _speech(preloaded: TTSEngine | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        engine = preloaded
        if engine is None:
            # Seconds for a voice to load (or to download, the first time a name is used).
            engine = await asyncio.to_thread(load_configured_tts, config)
        if engine is None:
            logger.info("spoken replies off (--tts-engine %s)", config.tts_engine)
            yield
            return
        logger.info("TTS ready: %s voice %s", engine.name, engine.voice)
        try:
            app[ECHO_WARM_UP] = await asyncio.wait_for(
                asyncio.to_thread(_warm_up_sentence, engine), WARM_UP_TIMEOUT_S
            )
        except Exception as exc:  # the speech server may be down now and up later
            logger.warning("echo canceller starts cold (the voice gave no warm-up): %s", exc)
        app[TTS] = service = TTSService(engine)
        yield
        await service.close()

    return ctx


WARM_UP_TIMEOUT_S = 30.0
WARM_UP_TEXT = "Hello. I am your assistant, and I am listening to everything you say."


def _warm_up_sentence(engine: TTSEngine) -> tuple[Int16Array, int]:
    pcm = np.concatenate([np.zeros(0, np.int16), *engine.synthesize(WARM_UP_TEXT)])
    if not pcm.size:
        raise ValueError("no audio")
    return pcm.astype(np.int16, copy=False), engine.sample_rate


def llm_settings(config: Config) -> LLMSettings:
    options: dict[str, float | int] = {}
    if config.ollama_temperature is not None:
        options["temperature"] = config.ollama_temperature
    if config.ollama_num_ctx is not None:
        options["num_ctx"] = config.ollama_num_ctx
    return LLMSettings(
        host=config.ollama_host,
        model=config.ollama_model,
        options=options,
        keep_alive=config.ollama_keep_alive,
        first_token_timeout_s=config.llm_first_token_timeout,
        total_timeout_s=config.llm_timeout,
    )


async def _llm(app: web.Application) -> AsyncIterator[None]:
    app[LLM] = llm = OllamaChat(llm_settings(app[CONFIG]))
    # Transcripts work without a language model, so a missing Ollama is a warning.
    config = app[CONFIG]
    status = await llm.check()
    if status.ok:
        logger.info("LLM ready: %s", status.message)
    else:
        logger.warning("LLM not ready (transcripts still work): %s", status.message)
    if is_loopback(service_hostname(config.ollama_host)):
        port = ollama_port(config.ollama_host)
        addresses = await asyncio.to_thread(local_addresses)
        exposed = await exposed_on(addresses, port)
        if exposed:
            logger.warning(
                "Ollama also answers on %s and has no authentication: set "
                "OLLAMA_HOST=127.0.0.1 for `ollama serve` and restart it",
                ", ".join(f"{a}:{port}" for a in exposed),
            )
    yield
    await llm.close()


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    app[SESSIONS] = registry = SessionRegistry(app[CONFIG].max_sessions)
    yield
    await registry.close_all("shutdown")  # any that began during shutdown


async def _close_sessions(app: web.Application) -> None:
    await app[SESSIONS].close_all("shutdown")


def _usage(app: web.Application) -> Measure:
    """This process's CPU, its recogniser's busy time and its sessions, now."""

    async def measure() -> Usage:
        return Usage(
            at=time.monotonic(),
            cpu_s=time.process_time(),  # every thread: Whisper's and the decoders' too
            asr_busy_s=await app[ASR].busy_seconds(),
            sessions=len(app[SESSIONS]),
        )

    return measure


def loop_watch_context(metrics: Metrics) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(watch_loop(metrics), name="loop-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
