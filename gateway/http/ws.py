"""``GET /ws``: the data-channel protocol over a WebSocket, for text-only clients.

A text frame that is not JSON is a user message, so ``wscat -c wss://HOST:8001/ws`` and
typing a question streams the answer back. A WebSocket is a session like a WebRTC one
(``signalling.session``): the same limits, clocks, outbox and ``DELETE /sessions/<id>``.
"""

from __future__ import annotations

import logging

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.http.auth import WS_SUBPROTOCOL
from gateway.http.cors import websocket_origin_allowed
from gateway.http.sessions import admit
from gateway.http.state import CONFIG, new_conversation
from signalling import protocol
from signalling.errors import TransportClosed
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)

HEARTBEAT_S = 20.0


class WebSocketTransport:
    kind = "ws"

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def opened(self) -> None:
        return  # a prepared WebSocket can be written at once

    async def write(self, text: str) -> None:
        # aiohttp waits here while the client is behind (its write buffer is full).
        try:
            await self._ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            raise TransportClosed(str(exc)) from exc

    async def close(self, reason: str) -> None:
        await self._ws.close(
            code=WSCloseCode.GOING_AWAY, message=f"session ended: {reason}".encode()
        )


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    # A browser sends Origin; a page on a foreign site must not ride on the user's
    # network position or credentials (cross-site WebSocket hijacking).
    if not websocket_origin_allowed(request, config.cors_origins):
        raise web.HTTPForbidden(reason="WebSocket from an origin that is not allowed")
    ws = web.WebSocketResponse(
        # Keeps NATs open and finds dead peers; pongs are not activity (the idle clock is
        # the session's, moved only by what the client says).
        heartbeat=HEARTBEAT_S,
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
    with admit(app, request.remote) as register:  # a text session costs Ollama time too
        await ws.prepare(request)
        session = Session(new_session_id(), WebSocketTransport(ws))
        register(session)
    session.set_state(SessionState.CONNECTED)
    conversation = new_conversation(app, session, {}, plain_text=True)
    conversation.no_voice_reason = "a WebSocket session has no audio track: text replies only"
    conversation.send_ready()
    logger.info("[%s] WebSocket session for %s", session.id, request.remote)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                session.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                conversation.report_error(
                    "not_supported", "binary audio frames are not supported yet"
                )
    finally:
        # The client left (or the session was ended, which closed the socket: a no-op
        # then, since a session closes once).
        await session.close("disconnected")
    return ws
