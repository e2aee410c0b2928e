"""``GET /ws``: the data-channel protocol over a WebSocket, for text-only clients.

A text frame that is not JSON is a user message, so ``wscat -c wss://HOST:8001/ws`` and
typing a question streams the answer back. Events go through a bounded outbox drained by
one writer task, so a client that stops reading cannot make the gateway queue forever.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.http.auth import WS_SUBPROTOCOL
from gateway.http.cors import websocket_origin_allowed
from gateway.http.middleware import SESSION_RETRY_AFTER_S, rate_limited
from gateway.http.state import CLIENT_SESSIONS, CONFIG, METRICS, WEBSOCKETS, new_conversation
from gateway.ops.config import Config
from signalling import protocol
from signalling.limits import client_key
from signalling.registry import new_session_id
from signalling.tasks import TaskOwner

logger = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
OUTBOX_LIMIT = 256


class WebSocketSink:
    """What a :class:`gateway.conversation.Conversation` needs from its transport."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.id = "ws-" + new_session_id()
        self.dropped_events = 0
        self._ws = ws
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_LIMIT)
        self.tasks = TaskOwner(self.id)

    def send(self, event: protocol.Event) -> None:
        try:
            self._outbox.put_nowait(protocol.encode(event))
        except asyncio.QueueFull:
            self.dropped_events += 1
            logger.warning("[%s] client not reading: dropped a %s event", self.id, event["type"])

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self.tasks.spawn(coro, name)

    async def write(self) -> None:
        try:
            while True:
                text = await self._outbox.get()
                await self._ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            logger.info("[%s] cannot send: %s", self.id, exc)
            await self._ws.close()  # ends the read loop, which ends the conversation


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    # A browser sends Origin; a page on a foreign site must not ride on the user's
    # network position or credentials (cross-site WebSocket hijacking).
    if not websocket_origin_allowed(request, config.cors_origins):
        raise web.HTTPForbidden(reason="WebSocket from an origin that is not allowed")
    # A text session costs Ollama time like a WebRTC one: the same per-address cap.
    client = client_key(request.remote)
    limiter = app[CLIENT_SESSIONS]
    if not limiter.acquire(client):
        return rate_limited(
            SESSION_RETRY_AFTER_S, "too many sessions from your address; end one first"
        )
    try:
        return await _serve(request, config)
    finally:
        limiter.release(client)


async def _serve(request: web.Request, config: Config) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S,
        # The idle limit: no message for this long ends the socket.
        receive_timeout=config.idle_timeout_s,
        # Bigger than a valid message, so an oversized one gets a readable error event;
        # beyond this aiohttp closes the socket with 1009 (message too big).
        max_msg_size=4 * protocol.MAX_MESSAGE_BYTES,
        # Compression on a socket that carries secrets and user text invites CRIME-style
        # leaks, and costs CPU for small JSON.
        compress=False,
        # A browser that authenticates with a "bearer.<token>" subprotocol must get one of
        # its offers back, or it fails the connection; the token itself is never chosen.
        protocols=(WS_SUBPROTOCOL,),
    )
    await ws.prepare(request)
    app = request.app
    sockets = app[WEBSOCKETS]
    sockets.add(ws)
    metrics = app[METRICS]
    metrics.sessions_started.labels("ws").inc()
    metrics.sessions_active.inc()
    sink = WebSocketSink(ws)
    conversation = new_conversation(app, sink, {})
    sink.spawn(sink.write(), "writer")
    logger.info("[%s] websocket from %s", sink.id, request.remote)
    conversation.send_ready()
    reason = "closed"
    try:
        async with asyncio.timeout(config.max_session_s):
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    conversation.on_message(message.data, plain_text=True)
                elif message.type is WSMsgType.BINARY:
                    conversation.report_error(
                        "not_supported", "binary audio frames are not supported yet"
                    )
    except TimeoutError:
        # receive_timeout (idle) or the session's maximum duration
        reason = "timeout"
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"session time limit")
    except asyncio.CancelledError:
        reason = "disconnected"  # aiohttp cancels the handler when the connection drops
        raise
    finally:
        # Bookkeeping first, without awaiting: a second cancellation must not skip it.
        sockets.discard(ws)
        conversation.cancel_reply("client")
        metrics.sessions_active.dec()
        metrics.sessions_ended.labels(reason).inc()
        logger.info("[%s] websocket ended (%s)", sink.id, reason)
        await sink.tasks.cancel_all()
    return ws


async def close_websockets(app: web.Application) -> None:
    """On shutdown: tell every client the server is going away, instead of letting the
    shutdown wait for them."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[WEBSOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
