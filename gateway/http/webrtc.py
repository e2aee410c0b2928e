"""Opening a WebRTC session from a validated offer: negotiate, register, start the voice
pipeline and the conversation."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.conversation.voice import VoicePipeline
from gateway.http import state as keys
from gateway.http.sessions import admit
from gateway.http.state import new_conversation
from media.endpointer import EndpointerSettings
from signalling.datachannel import PeerTransport
from signalling.errors import OfferError
from signalling.offer import Offer
from signalling.peer import answer_offer, new_peer_connection
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)


async def open_session(
    app: web.Application, offer: Offer, remote: str | None
) -> tuple[Session, str]:
    """Negotiate, register and start a session; returns it with the answer's SDP. On any
    failure nothing is left behind: the peer connection is closed and the slot freed."""
    config = app[keys.CONFIG]
    started = time.perf_counter()
    with admit(app, remote) as register:
        session_id = new_session_id()
        transport = PeerTransport(
            new_peer_connection(config.ice_servers, app[keys.ICE_POLICY]), session_id
        )
        session = Session(session_id, transport)
        transport.on_message = session.receive
        try:
            conversation = new_conversation(app, session, offer.session)
            voice = VoicePipeline(
                session,
                transport.pc,
                conversation,
                app[keys.ASR],
                app[keys.VAD],
                EndpointerSettings(silence_ms=config.vad_silence_ms),
                app[keys.METRICS],
            )
            _watch_connection(session, transport)
            answer = await answer_offer(transport.pc, offer.sdp)
        except BaseException:  # a bad offer, a timeout, or the client going away
            await asyncio.shield(session.close("negotiation-failed"))
            raise
        if session.closing:  # ended while negotiating
            raise OfferError("the session ended before it was answered")
        register(session)
    app[keys.METRICS].offer_time.observe(time.perf_counter() - started)
    conversation.send_ready()  # the first event on the channel, once it opens
    voice.start()
    session.set_state(SessionState.CONNECTING)
    logger.info("[%s] WebRTC session for %s", session.id, remote)
    return session, answer


def _watch_connection(session: Session, transport: PeerTransport) -> None:
    pc = transport.pc

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        if state == "connected":
            session.set_state(SessionState.CONNECTED)
        elif state in ("failed", "closed"):
            session.request_close(f"connection-{state}")
