"""What hangs off the application (typed keys), and building a session's conversation
from it. Separate from ``gateway.http.app`` so that route modules can import it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web
from aiortc import RTCPeerConnection

from gateway.conversation.dialogue import Conversation, ConversationSettings
from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.llm import OllamaChat
from gateway.conversation.resume import Conversations
from gateway.conversation.speech import Speaker
from gateway.conversation.voice import VoicePipeline, endpointer_settings
from gateway.http.auth import Principal
from gateway.http.drain import Drain
from gateway.ops.config import Config
from gateway.ops.metrics import Metrics
from media import Int16Array
from media.asr.service import Recogniser
from media.playout import ReplyAudioTrack
from media.tts.service import TTSService
from media.vad import VadBatcher
from signalling.ice import IcePolicy
from signalling.limits import ConcurrencyLimiter, RateLimiter
from signalling.registry import SessionRegistry
from signalling.session import Session

CONFIG = web.AppKey("config", Config)
# Spoken replies; absent when --tts-engine is none (or auto without piper installed).
TTS = web.AppKey("tts", TTSService)
# A sentence in the gateway's own voice, (PCM, rate), that each session's echo canceller
# learns the absence of an echo from (media.echo.EchoCanceller.warm_up); absent when the
# voice could not say it at start-up.
ECHO_WARM_UP = web.AppKey("echo_warm_up", tuple[Int16Array, int])
ASR = web.AppKey("asr", Recogniser)  # in this process, or an ASR server (--asr-url)
TURN_JUDGE = web.AppKey("turn_judge", TurnJudge)  # whether a pause ends the turn
VAD = web.AppKey("vad", VadBatcher)
SESSIONS = web.AppKey("sessions", SessionRegistry)
LLM = web.AppKey("llm", OllamaChat)
METRICS = web.AppKey("metrics", Metrics)
OFFER_LIMITER = web.AppKey("offer_limiter", RateLimiter)  # POST /offer per client address
ICE_POLICY = web.AppKey("ice_policy", IcePolicy)
CLIENT_SESSIONS = web.AppKey("client_sessions", ConcurrencyLimiter)  # sessions per address
DRAIN = web.AppKey("drain", Drain)  # shutting down: no new sessions, replies may finish
CONVERSATIONS = web.AppKey("conversations", Conversations)  # live and resumable histories


def new_conversation(
    app: web.Application,
    session: Session,
    overrides: Mapping[str, object],
    *,
    plain_text: bool = False,
) -> Conversation:
    """The session's conversation, with the gateway's settings and a client's ``session``
    overrides, wired to what the client sends (``plain_text``: text that is not JSON is a
    question, as on ``/ws``) and ended with the session. An override ``conversation`` (a
    token from an earlier ``session.ready``) continues that conversation's history if the
    session's owner (who authenticated; nobody without auth) may."""
    config = app[CONFIG]
    engine = app[ASR].engine
    language = overrides.get("language")
    prompt = overrides.get("system_prompt")
    conversation = Conversation(
        session,
        app[LLM],
        app[METRICS],
        ConversationSettings(
            system_prompt=prompt if isinstance(prompt, str) else config.system_prompt,
            history_turns=config.history_turns,
            language=language if isinstance(language, str) else None,
            asr={"engine": engine.name, "model": engine.model},
            languages=engine.languages,
            tts=tts if isinstance(tts := overrides.get("tts"), bool) else None,
        ),
    )
    session.on_message = lambda data: conversation.on_message(data, plain_text=plain_text)
    session.on_closed.append(lambda s: conversation.cancel_reply("client"))
    drain = app[DRAIN]
    drain.watch(session.id, lambda: conversation.busy)
    session.on_closed.append(lambda s: drain.forget(s.id))
    if config.resume_window_s:
        token = overrides.get("conversation")
        owner = session.owner
        principal = f"{owner.method}:{owner.subject}" if isinstance(owner, Principal) else None
        _resume(app[CONVERSATIONS], session, conversation, token, principal)
    return conversation


def _resume(
    conversations: Conversations,
    session: Session,
    conversation: Conversation,
    token: object,
    principal: str | None,
) -> None:
    """Continue the conversation ``token`` names, or start one; either way the session
    carries it until it ends, and session.ready hands out its token."""
    now = time.time()
    resumed = conversations.begin(token if isinstance(token, str) else None, principal, now)
    conversation_id = resumed.conversation_id
    conversation.history.restore(resumed.turns)
    if resumed.refused is not None:
        conversation.resume_refused = (resumed.refused.code, str(resumed.refused))
    conversation.resume_token = conversations.tokens.issue(conversation_id, principal, now)

    def replaced() -> None:  # its client came back on a new session: this one is stale
        session.request_close("replaced")

    holding = conversations.hold(
        conversation_id, principal, lambda: conversation.history.turns, replaced
    )
    session.on_closed.append(lambda s: conversations.release(holding, time.time()))


def new_voice(
    app: web.Application,
    session: Session,
    conversation: Conversation,
    pc: RTCPeerConnection | None = None,
) -> VoicePipeline:
    """The session's voice pipeline (VAD, turn-taking, ASR) with the gateway's settings:
    fed by ``pc``'s first audio track, or by the caller (``listen_pcm``) without one."""
    config = app[CONFIG]
    asr = app[ASR]
    return VoicePipeline(
        session,
        pc,
        conversation,
        asr,
        app[VAD],
        endpointer_settings(config, asr.engine.device),
        app[METRICS],
        judge=app[TURN_JUDGE],
        # A probable end never waits longer than the longest silence.
        likely_silence_ms=min(config.turn_likely_silence_ms, config.vad_silence_ms),
    )


def new_speaker(
    app: web.Application,
    session: Session,
    conversation: Conversation,
    voice: VoicePipeline,
    tts: TTSService,
    track: ReplyAudioTrack,
) -> Speaker:
    """Replies spoken on ``track``, started; the voice pipeline lets the person interrupt
    them (``--barge-in-min-ms``)."""
    speaker = Speaker(session, tts, track, app[METRICS])
    conversation.voice = speaker
    voice.speak_with(speaker, app[CONFIG].barge_in_min_ms)
    speaker.start()
    return speaker
