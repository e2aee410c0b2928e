"""Opening a WebRTC session from a validated offer: negotiate, register, start the voice
pipeline and the conversation."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.conversation.dialogue import Conversation
from gateway.conversation.voice import VoicePipeline
from gateway.http import state as keys
from gateway.http.auth import Principal
from gateway.http.relay import gateway_ice_servers
from gateway.http.sessions import admit
from gateway.http.state import new_conversation, new_speaker, new_voice
from gateway.ops.metrics import ReceiverMetrics
from media import Int16Array
from media.echo import EchoCanceller
from media.playout import RATE as PLAYOUT_RATE
from media.playout import ReplyAudioTrack
from media.tts.service import TTSService
from media.vad import SAMPLE_RATE as LISTEN_RATE
from signalling.audio_receiver import adapt_audio_receivers
from signalling.datachannel import PeerTransport
from signalling.errors import OfferError
from signalling.offer import Offer
from signalling.peer import answer_offer, new_peer_connection, sends_audio
from signalling.registry import new_session_id
from signalling.session import Session, SessionState

logger = logging.getLogger(__name__)


async def open_session(
    app: web.Application,
    offer: Offer,
    remote: str | None,
    *,
    principal: Principal | None = None,
    receive_only: bool = False,
) -> tuple[Session, str]:
    """Negotiate, register and start a session; returns it with the answer's SDP. On any
    failure nothing is left behind: the peer connection is closed and the slot freed.

    ``principal``: who asked (its session is its own: ``gateway.http.sessions``).
    ``receive_only``: the answer sends no audio (WHIP, RFC 9725), so replies are text only.
    Events go on the first data channel the client opens and to Server-Sent Events
    subscribers; an offer without a data channel (a WHIP publisher) leaves them to the
    subscribers alone."""
    started = time.perf_counter()
    with admit(app, remote) as register:
        session_id = new_session_id(app[keys.CONFIG].replica_id, app[keys.CONFIG].worker_id)
        transport = PeerTransport(
            new_peer_connection(gateway_ice_servers(app), app[keys.ICE_POLICY]), session_id
        )
        session = Session(session_id, transport)
        session.owner = principal
        transport.on_message = session.receive
        # Lost audio concealed or rebuilt from FEC, not multiplied by aiortc's jitter buffer;
        # decoded straight to what the listener hears (no resampling after).
        adapt_audio_receivers(
            transport.pc,
            ReceiverMetrics(app[keys.METRICS]),
            rate=LISTEN_RATE,
            channels=1,
        )
        tts = None if receive_only else app.get(keys.TTS)
        track = ReplyAudioTrack() if tts is not None else None
        try:
            conversation = new_conversation(app, session, offer.session)
            voice = new_voice(app, session, conversation, transport.pc)
            _watch_connection(session, transport)
            answer = await answer_offer(transport.pc, offer.sdp, outbound=track)
        except BaseException:  # a bad offer, a timeout, or the client going away
            await asyncio.shield(session.close("negotiation-failed"))
            raise
        if session.closing:  # ended while negotiating
            raise OfferError("the session ended before it was answered")
        # No data channel offered: none can ever open; events reach subscribers only.
        session.transport_events = transport.pc.sctp is not None
        register(session)
    try:
        _start(app, session, transport, offer, conversation, voice, tts, track, receive_only)
    except BaseException:  # a bug: the client gets no answer, so nothing may stay behind
        await asyncio.shield(session.close("negotiation-failed"))
        raise
    app[keys.METRICS].offer_time.observe(time.perf_counter() - started)
    logger.info("[%s] WebRTC session for %s", session.id, remote)
    return session, answer


def _start(
    app: web.Application,
    session: Session,
    transport: PeerTransport,
    offer: Offer,
    conversation: Conversation,
    voice: VoicePipeline,
    tts: TTSService | None,
    track: ReplyAudioTrack | None,
    receive_only: bool,
) -> None:
    """A registered session's voice, replies and first event. The answer sends audio:
    replies are spoken on ``track``, and the gateway's own voice is removed from what the
    microphone hears."""
    if tts is not None and track is not None:
        if sends_audio(transport.pc, track):
            speaker = new_speaker(app, session, conversation, voice, tts, track)
            voice_name = offer.session.get("voice")
            if isinstance(voice_name, str):
                speaker.choose_voice(voice_name)  # checked by the route
            # A microphone that cancels echo itself leaves none for ours to find: start it
            # warm (transparent), or it would suppress the person until it learns so.
            warm = offer.session.get("echo_cancellation") is True
            warm_up = app.get(keys.ECHO_WARM_UP) if warm else None
            session.spawn(_cancel_echo(voice, track, warm_up), "echo")
        else:
            track.stop()
            conversation.no_voice_reason = "this session cannot hear replies: its offer only sends"
    if receive_only:
        conversation.no_voice_reason = "a WHIP session only receives: replies come as text"
    conversation.send_ready()  # the first event on the channel, once it opens
    voice.start()
    session.set_state(SessionState.CONNECTING)


async def _cancel_echo(
    voice: VoicePipeline, track: ReplyAudioTrack, warm_up: tuple[Int16Array, int] | None
) -> None:
    """Make the session's echo canceller (warmed up off the loop when asked: a fraction of
    a second of CPU), then give it the reply audio and the microphone; until then the
    barge-in rule alone guards against the gateway's own voice."""

    def make() -> EchoCanceller:
        echo = EchoCanceller()
        if warm_up is not None:
            echo.warm_up(*warm_up)
        return echo

    echo = await asyncio.to_thread(make)
    track.on_frame = lambda samples: echo.far_end(samples, PLAYOUT_RATE)
    voice.cancel_echo(echo)


def _watch_connection(session: Session, transport: PeerTransport) -> None:
    pc = transport.pc

    @pc.on("connectionstatechange")
    def on_state() -> None:
        state = pc.connectionState
        if state == "connected":
            session.set_state(SessionState.CONNECTED)
        elif state in ("failed", "closed"):
            session.request_close(f"connection-{state}")
