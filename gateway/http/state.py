"""What hangs off the application (typed keys), and building a session's conversation
from it. Separate from ``gateway.http.app`` so that route modules can import it."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.conversation.dialogue import Conversation, ConversationSettings
from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.llm import OllamaChat
from gateway.ops.config import Config
from gateway.ops.metrics import Metrics
from media.asr.service import ASRService
from media.tts.base import Int16Array
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
ASR = web.AppKey("asr", ASRService)
TURN_JUDGE = web.AppKey("turn_judge", TurnJudge)  # whether a pause ends the turn
VAD = web.AppKey("vad", VadBatcher)
SESSIONS = web.AppKey("sessions", SessionRegistry)
LLM = web.AppKey("llm", OllamaChat)
METRICS = web.AppKey("metrics", Metrics)
OFFER_LIMITER = web.AppKey("offer_limiter", RateLimiter)  # POST /offer per client address
ICE_POLICY = web.AppKey("ice_policy", IcePolicy)
CLIENT_SESSIONS = web.AppKey("client_sessions", ConcurrencyLimiter)  # sessions per address


def new_conversation(
    app: web.Application,
    session: Session,
    overrides: Mapping[str, object],
    *,
    plain_text: bool = False,
) -> Conversation:
    """The session's conversation, with the gateway's settings and a client's ``session``
    overrides, wired to what the client sends (``plain_text``: text that is not JSON is a
    question, as on ``/ws``) and ended with the session."""
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
    return conversation
