"""HTTP routes: the contract of DESIGN.md (health, config, offer, sessions, the page)."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import time

from aiohttp import web

from gateway import state as keys
from gateway.state import new_conversation
from gateway.voice import VoicePipeline
from gateway.ws import websocket
from media.endpointer import EndpointerSettings
from signalling import protocol
from signalling.offer import parse_offer
from signalling.peer import answer_offer, new_peer_connection
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)

# A client that got an answer but never connects must not hold a session slot for long.
CONNECT_TIMEOUT_S = 30.0


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/app.js", script)
    app.router.add_get("/health", health)
    app.router.add_get("/config", client_config)
    app.router.add_post("/offer", offer)
    app.router.add_delete("/sessions/{session_id}", end_session)
    app.router.add_get("/ws", websocket)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def client_config(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG]
    engine = request.app[keys.ASR].engine
    llm = request.app[keys.LLM]
    return web.json_response(
        {
            "protocol": protocol.PROTOCOL_VERSION,
            "ice_servers": [{"urls": url} for url in config.ice_servers],
            "asr": {"engine": engine.name, "model": engine.model},
            "llm": {"model": llm.model, "available": llm.available},
            "features": {"transcript_partial": False, "llm": True, "tts": False, "ws": True},
        }
    )


async def offer(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="POST /offer takes application/json")
    received = time.perf_counter()
    parsed = parse_offer(await request.read())
    app = request.app
    config = app[keys.CONFIG]
    registry = app[keys.SESSIONS]
    with registry.reserve():
        session = Session(
            new_session_id(),
            new_peer_connection(config.ice_servers),
            on_closed=registry.discard,
        )
        conversation = new_conversation(app, session, parsed.session)
        voice = VoicePipeline(
            session,
            conversation,
            app[keys.ASR],
            app[keys.VAD],
            EndpointerSettings(silence_ms=config.vad_silence_ms),
        )
        _watch_connection(session)
        try:
            answer = await answer_offer(session.pc, parsed.sdp)
        except BaseException:  # a bad offer, a timeout, or the client going away
            await asyncio.shield(session.close("negotiation failed"))
            raise
        registry.add(session)
    voice.start()
    session.set_state(SessionState.CONNECTING)
    session.spawn(_connect_deadline(session), "connect-deadline")
    logger.info(
        "[%s] answered offer from %s in %.0f ms",
        session.id,
        request.remote,
        1000 * (time.perf_counter() - received),
    )
    return web.json_response(
        {"sdp": answer, "type": "answer", "session_id": session.id},
        headers={"Location": f"/sessions/{session.id}"},
    )


def _watch_connection(session: Session) -> None:
    pc = session.pc

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        if state == "connected":
            session.set_state(SessionState.CONNECTED)
        elif state in ("failed", "closed"):
            session.request_close(f"connection {state}")


async def _connect_deadline(session: Session) -> None:
    await asyncio.sleep(CONNECT_TIMEOUT_S)
    if session.state is not SessionState.CONNECTED:
        await session.close(f"not connected within {CONNECT_TIMEOUT_S:.0f} s")


async def end_session(request: web.Request) -> web.Response:
    session = request.app[keys.SESSIONS].get(request.match_info["session_id"])
    await session.close("deleted by client")
    return web.Response(status=204)


def _web_file(name: str) -> bytes:
    return importlib.resources.files("gateway").joinpath("web", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_web_file("index.html"), content_type="text/html", charset="utf-8")


async def script(request: web.Request) -> web.Response:
    return web.Response(body=_web_file("app.js"), content_type="text/javascript", charset="utf-8")
