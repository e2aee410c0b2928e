"""HTTP routes: the contract of DESIGN.md (health, config, offer, sessions, the page).
WHIP is ``gateway.http.whip``; a session's Server-Sent Events, ``gateway.http.events``."""

from __future__ import annotations

import functools
import importlib.resources
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.http import state as keys
from gateway.http import whip
from gateway.http.admission import capacity_check
from gateway.http.auth import principal_of
from gateway.http.events import events_path, stream_events
from gateway.http.forwarded import client_address
from gateway.http.middleware import rate_limited
from gateway.http.openapi import openapi
from gateway.http.relay import TURN_RELAY, client_ice_servers
from gateway.http.sessions import find_session
from gateway.http.webrtc import open_session
from gateway.http.ws import websocket
from media.asr.base import check_language
from media.asr.remote import RemoteASR
from media.tts.base import check_voice
from signalling import protocol
from signalling.limits import client_key
from signalling.offer import parse_offer

logger = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/app.js", script)
    app.router.add_get("/gateway-client.js", client_module)
    app.router.add_get("/app.css", stylesheet)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/config", client_config)
    app.router.add_post("/offer", offer)
    app.router.add_post("/whip", whip.publish)
    app.router.add_route("OPTIONS", "/whip", whip.endpoint_options)
    app.router.add_get("/whip", whip.no_content)
    app.router.add_delete("/sessions/{session_id}", end_session)
    app.router.add_get("/sessions/{session_id}", whip.session_resource)
    app.router.add_patch("/sessions/{session_id}", whip.patch_session)
    # Named: it takes a per-session capability instead of credentials (gateway.http.auth).
    app.router.add_get("/sessions/{session_id}/events", stream_events, name="session-events")
    app.router.add_get("/ws", websocket)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", api_description)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the ASR model is loaded and Ollama answers with the model present."""
    asr = request.app[keys.ASR]
    # A model here is loaded before the app serves at all; an ASR server may be down.
    asr_problem = await asr.check() if isinstance(asr, RemoteASR) else None
    engine = asr.engine
    status = await request.app[keys.LLM].recent_status()
    checks = {
        "asr": {
            "ok": asr_problem is None,
            "engine": engine.name,
            "model": engine.model,
            "device": engine.device,
            **({"message": asr_problem} if asr_problem else {}),
        },
        "llm": {
            "ok": status.ok,
            "reachable": status.reachable,
            "model_present": status.model_present,
            "message": status.message,
        },
    }
    if request.app[keys.DRAIN].draining:  # a load balancer must stop sending people here
        checks["shutdown"] = {"ok": False, "message": "the gateway is shutting down"}
    capacity = capacity_check(request.app)
    if capacity is not None:
        checks["capacity"] = capacity
    ok = all(bool(check["ok"]) for check in checks.values())
    return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)


async def api_description(request: web.Request) -> web.Response:
    return web.json_response(openapi(request.app[keys.CONFIG]))


async def client_config(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG]
    engine = request.app[keys.ASR].engine
    llm = request.app[keys.LLM]
    tts = request.app.get(keys.TTS)
    return web.json_response(
        {
            "protocol": protocol.PROTOCOL_VERSION,
            # With --turn-url, the relay and a short-lived credential for this client.
            "ice_servers": client_ice_servers(request, time.time()),
            "asr": {"engine": engine.name, "model": engine.model},
            "llm": {"model": llm.model, "available": llm.available},
            "features": {
                "transcript_partial": False,
                "llm": True,
                "tts": tts is not None,
                "ws": True,
                # A relay exists; with auth on, /config lists it to authenticated requests.
                "turn": request.app.get(TURN_RELAY) is not None,
            },
            "tts": (
                {"enabled": True, "engine": tts.engine.name, "voice": tts.engine.voice}
                if tts is not None
                else {"enabled": False}
            ),
            # So a client can ask for a token before opening the microphone.
            "auth": config.auth,
        },
        # May hold a credential for this one client: no cache keeps it for another.
        headers={"Cache-Control": "no-store"},
    )


async def offer(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason='POST /offer takes application/json ({"sdp": ..., "type": "offer"}); '
            "a bare application/sdp offer goes to POST /whip (WHIP)"
        )
    remote = client_address(request)
    client = client_key(remote)
    wait = request.app[keys.OFFER_LIMITER].check(client, time.monotonic())
    if wait is not None:
        return rate_limited(wait, "too many offers from your address; try again shortly")
    parsed = parse_offer(await request.read())
    language = parsed.session.get("language")
    engine = request.app[keys.ASR].engine
    check_language(language if isinstance(language, str) else None, engine.languages, engine.model)
    voice = parsed.session.get("voice")
    if isinstance(voice, str):
        tts = request.app.get(keys.TTS)
        if tts is None:
            raise web.HTTPBadRequest(reason="spoken replies are off on this gateway: no voice")
        check_voice(tts.engine, voice)
    session, answer = await open_session(
        request.app, parsed, remote, principal=principal_of(request)
    )
    return web.json_response(
        {
            "sdp": answer,
            "type": "answer",
            "session_id": session.id,
            # Reads the session's events (Server-Sent Events) without credentials.
            "events_token": session.events_token,
        },
        headers={
            "Location": f"/sessions/{session.id}",
            "Link": whip.link(events_path(session.id, session.events_token), whip.EVENTS_REL),
            "Cache-Control": "no-store",
        },
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def end_session(request: web.Request) -> web.Response:
    session = find_session(request)  # another principal's session is not found
    await session.close("deleted")
    return web.Response(status=204)


@functools.cache
def _web_file(name: str) -> bytes:
    # Read once: a few small files, and no disk access on the event loop after the first.
    return importlib.resources.files("gateway").joinpath("web", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_web_file("index.html"), content_type="text/html", charset="utf-8")


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=_web_file("app.css"), content_type="text/css", charset="utf-8")


async def script(request: web.Request) -> web.Response:
    return web.Response(body=_web_file("app.js"), content_type="text/javascript", charset="utf-8")


async def client_module(request: web.Request) -> web.Response:
    """The page's client module, also for other front ends to import (ES module)."""
    return web.Response(
        body=_web_file("gateway-client.js"), content_type="text/javascript", charset="utf-8"
    )
