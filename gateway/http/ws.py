"""``GET /ws``: the data-channel protocol over a WebSocket, and audio for devices without
WebRTC (a Raspberry Pi, an ESP32 with a microphone).

Text frames carry the JSON messages; a text frame that is not JSON is a user message, so
``wscat -c wss://HOST:8001/ws`` and typing a question streams the answer back. Binary
frames are audio, s16le mono at 16 kHz or the rate a ``session.update`` chose
(``sample_rate``: 8000, 16000, 24000 or 48000), both ways:

- in: any size up to ``media.pcm.MAX_FRAME_S`` of audio; heard by the same VAD, turns,
  ASR and barge-in as a WebRTC track (``media.pcm_input``). A frame that is not whole
  samples, is too long, or runs too far ahead of real time is dropped with an ``error``
  event, and the session goes on; past :data:`MAX_MESSAGE_BYTES` aiohttp closes the
  socket with 1009.
- out: once the client asks (``session.update`` with ``tts: true``), replies are spoken
  as 20 ms frames paced in real time (``media.pcm_output``), with the same
  ``reply.audio.*`` events as WebRTC. Off at first, unlike WebRTC, where a client says it
  by offering to receive audio: here the same socket serves text-only clients (wscat),
  to which audio frames would be noise.

A WebSocket is a session like a WebRTC one (``signalling.session``): the same limits,
clocks, outbox and ``DELETE /sessions/<id>``. There is no echo canceller on this path: a
device that plays replies on a speaker should cancel its own echo (or use headphones); the
barge-in rule (``--barge-in-min-ms``) still keeps short bursts of echo from interrupting.
"""

from __future__ import annotations

import logging

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.conversation.dialogue import Conversation
from gateway.conversation.voice import VoicePipeline
from gateway.http.auth import WS_SUBPROTOCOL, principal_of
from gateway.http.cors import websocket_origin_allowed
from gateway.http.forwarded import client_address
from gateway.http.sessions import admit
from gateway.http.state import CONFIG, TTS, new_conversation, new_speaker, new_voice
from media.pcm import MAX_FRAME_BYTES, AudioRateLimited, PcmError
from media.pcm_input import PcmInput
from media.pcm_output import PcmOutput
from media.playout import ReplyAudioTrack
from media.vad import SAMPLE_RATE
from signalling import protocol
from signalling.errors import TransportClosed
from signalling.offer import parse_session
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
# Above the largest valid message (a second of 48 kHz audio; JSON is far smaller), so an
# oversized one gets a readable error event; beyond this aiohttp closes the socket with
# 1009 (message too big) without buffering more of it.
MAX_MESSAGE_BYTES = 2 * max(MAX_FRAME_BYTES, protocol.MAX_MESSAGE_BYTES)


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

    async def write_audio(self, data: bytes) -> None:
        """One binary frame; aiohttp writes each frame whole, so audio and events
        interleave safely from their two tasks."""
        try:
            await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError) as exc:
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
        max_msg_size=MAX_MESSAGE_BYTES,
        # Compression on a socket that carries secrets and user text invites CRIME-style
        # leaks, and costs CPU for small JSON (and gains nothing on PCM).
        compress=False,
        # A browser that authenticates with a "bearer.<token>" subprotocol must get one of
        # its offers back, or it fails the connection; the token itself is never chosen.
        protocols=(WS_SUBPROTOCOL,),
    )
    # ?conversation=TOKEN (from an earlier session.ready) continues that conversation.
    resume = request.query.get("conversation")
    overrides = parse_session({"conversation": resume}) if resume is not None else {}
    remote = client_address(request)
    with admit(app, remote) as register:  # a text session costs Ollama time too
        await ws.prepare(request)
        transport = WebSocketTransport(ws)
        session = Session(new_session_id(config.replica_id, config.worker_id), transport)
        session.owner = principal_of(request)  # its session is its own, as over WebRTC
        register(session)
    try:  # from here on, whatever happens ends the session and frees its place
        session.set_state(SessionState.CONNECTED)
        conversation = new_conversation(app, session, overrides, plain_text=True)
        voice = new_voice(app, session, conversation)
        audio_in = voice.listen_pcm(SAMPLE_RATE)
        audio_out = _speak(app, session, conversation, voice, transport)

        def set_rate(rate: int) -> None:
            audio_in.set_rate(rate)
            if audio_out is not None:
                audio_out.set_rate(rate)

        conversation.on_sample_rate = set_rate
        conversation.send_ready()
        voice.start()
        logger.info("[%s] WebSocket session for %s", session.id, remote)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                session.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                await _hear(session, conversation, audio_in, message.data)
            elif message.type is WSMsgType.ERROR:  # aiohttp closes the socket after it
                logger.info("[%s] WebSocket error: %s", session.id, ws.exception())
    finally:
        # The client left (or the session was ended, which closed the socket: a no-op
        # then, since a session closes once).
        await session.close("disconnected")
    return ws


async def _hear(session: Session, conversation: Conversation, audio: PcmInput, data: bytes) -> None:
    if session.closing:
        return  # nothing a client sends now starts new work
    try:
        await audio.receive(data)
    except PcmError as exc:
        conversation.report_error(exc.code, str(exc), retryable=isinstance(exc, AudioRateLimited))


def _speak(
    app: web.Application,
    session: Session,
    conversation: Conversation,
    voice: VoicePipeline,
    transport: WebSocketTransport,
) -> PcmOutput | None:
    """Spoken replies as binary frames, when the gateway has a voice; off until asked."""
    tts = app.get(TTS)
    if tts is None:
        return None
    track = ReplyAudioTrack()
    new_speaker(app, session, conversation, voice, tts, track)
    conversation.speak = False  # a client turns it on with session.update {"tts": true}

    async def send(data: bytes) -> None:
        try:
            await transport.write_audio(data)
        except TransportClosed as exc:
            logger.info("[%s] cannot send audio: %s", session.id, exc)
            session.request_close("disconnected")

    output = PcmOutput(track, send, rate=SAMPLE_RATE)
    session.spawn(output.run(), "audio-out")
    session.on_closed.append(lambda s: track.stop())
    return output
