"""Opening a WebRTC session from a validated offer, and everything that ends one."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.conversation.voice import VoicePipeline
from gateway.errors import OfferError
from gateway.http import state as keys
from gateway.http.state import new_conversation
from media.endpointer import EndpointerSettings
from signalling.lifecycle import SessionLimits
from signalling.offer import Offer
from signalling.peer import answer_offer, new_peer_connection
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)


async def open_session(app: web.Application, offer: Offer) -> tuple[Session, str]:
    """Negotiate, register and start a session; returns it with the answer's SDP. On any
    failure nothing is left behind: the peer connection is closed and the slot freed."""
    config = app[keys.CONFIG]
    registry = app[keys.SESSIONS]
    metrics = app[keys.METRICS]
    started = time.perf_counter()
    with registry.reserve():
        pc = new_peer_connection(config.ice_servers, app[keys.ICE_POLICY])
        session = Session(new_session_id(), pc)
        conversation = new_conversation(app, session, offer.session)
        voice = VoicePipeline(
            session,
            conversation,
            app[keys.ASR],
            app[keys.VAD],
            EndpointerSettings(silence_ms=config.vad_silence_ms),
            metrics,
        )
        _watch_connection(session)
        try:
            answer = await answer_offer(session.pc, offer.sdp)
        except BaseException:  # a bad offer, a timeout, or the client going away
            await asyncio.shield(session.close("negotiation-failed"))
            raise
        if session.state is SessionState.CLOSED:  # ended while negotiating
            raise OfferError("the session ended before it was answered")
        registry.add(session)
        session.on_closed.append(lambda s: _closed(app, s))
    metrics.sessions_started.labels("webrtc").inc()
    metrics.sessions_active.inc()
    metrics.offer_time.observe(time.perf_counter() - started)
    voice.start()
    session.set_state(SessionState.CONNECTING)
    limits = SessionLimits(
        max_duration_s=config.max_session_s, idle_timeout_s=config.idle_timeout_s
    )
    session.spawn(session.watch(limits), "watchdog")
    return session, answer


def _closed(app: web.Application, session: Session) -> None:
    app[keys.SESSIONS].discard(session)
    metrics = app[keys.METRICS]
    metrics.sessions_active.dec()
    metrics.sessions_ended.labels(session.close_reason or "unknown").inc()
    logger.info(
        "[%s] ended (%s) after %.0f s",
        session.id,
        session.close_reason,
        time.monotonic() - session.created_at,
    )


def _watch_connection(session: Session) -> None:
    pc = session.pc

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        if state == "connected":
            session.set_state(SessionState.CONNECTED)
        elif state in ("failed", "closed"):
            session.request_close(f"connection-{state}")
