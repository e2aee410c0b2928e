"""The conversation of one session: turns (transcripts and typed text) → Ollama → replies.

Transport-agnostic: it speaks to an :class:`EventSink` (a :class:`signalling.session.Session`,
whichever transport carries it) and is fed transcripts by
:class:`gateway.conversation.voice.VoicePipeline`.

Rules, one reply at a time:
- A new turn while a reply streams cancels that reply first (``reply.cancelled``, reason
  ``barge-in`` for speech, ``client`` for typed text): the newest thing the person said
  is what they want answered.
- The person starting to speak cancels the reply at once (``barge-in``), before any
  transcript exists; ``cancel`` does the same with reason ``client``.
- The part of an answer already sent stays in history, marked as interrupted.
- Every ``reply.started`` ends in exactly one ``reply.done`` or ``reply.cancelled``.

Preemptive replies: when a pause probably ends the turn, the answer to its transcript may
start before the turn is final (:meth:`Conversation.preempt`). Its pieces are held here,
unseen; if the turn ends with that same transcript they are released as the reply (whose
first piece may already be in), otherwise the request is withdrawn and the client never
hears of it. One at a time, and never while a real reply streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.conversation.history import History
from gateway.conversation.llm import OllamaChat
from gateway.errors import LLMError, ProtocolError
from gateway.ops.metrics import Metrics
from media.asr.base import check_language
from media.errors import TTSVoiceMissing, UnsupportedLanguage
from signalling import protocol
from signalling.limits import RateLimiter

logger = logging.getLogger(__name__)

# Client messages per session: plenty for a person typing, pings and cancels; a flood is
# answered with rate_limited errors instead of reaching Ollama.
MESSAGES_PER_MINUTE = 120
MESSAGE_BURST = 20
# A preemptive answer waits at most this long for its turn to end before it is dropped
# (the turn's own longest silence is seconds, so this is only a backstop).
PREEMPT_HOLD_S = 30.0


class EventSink(Protocol):
    id: str

    def send(self, event: protocol.Event) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...


class ReplyVoice(Protocol):
    """Speaks replies (``gateway.conversation.speech.Speaker``): a WebRTC session whose
    answer sends audio has one."""

    @property
    def engine(self) -> str: ...

    @property
    def voice(self) -> str: ...

    @property
    def speaking(self) -> bool: ...

    def begin(self, reply_id: str, times: TurnTimes) -> None: ...

    def add(self, reply_id: str, delta: str) -> None: ...

    def finish(self, reply_id: str) -> None: ...

    def cut(self) -> tuple[str, str] | None: ...

    def choose_voice(self, voice: str) -> None: ...

    def hold(self, on: bool) -> None: ...

    def timings(self, reply_id: str) -> dict[str, float]: ...


@dataclass(frozen=True)
class ConversationSettings:
    system_prompt: str
    history_turns: int = 10
    language: str | None = None
    asr: dict[str, str] = field(default_factory=dict)  # engine and model, for session.ready
    languages: frozenset[str] = frozenset({"en"})  # what the recogniser can transcribe
    tts: bool | None = None  # the offer's "session" asked for spoken replies, or not


@dataclass(frozen=True)
class TurnTimes:
    """When a turn ended (``time.monotonic``): the end of speech itself, and when the
    endpointer decided so. For typed text both are the message's arrival."""

    speech_end: float
    decided: float


@dataclass
class _Reply:
    id: str
    utterance_id: str | None
    times: TurnTimes
    task: asyncio.Task[None] | None = None
    parts: list[str] = field(default_factory=list)
    # A preemptive reply: its pieces wait here, unsent, until the turn is final.
    prompt: str | None = None
    released: asyncio.Event | None = None
    released_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Conversation:
    def __init__(
        self,
        sink: EventSink,
        llm: OllamaChat,
        metrics: Metrics,
        settings: ConversationSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.llm = llm
        self.metrics = metrics
        self.system_prompt = settings.system_prompt
        self.language = settings.language
        self.history = History(settings.history_turns)
        self._settings = settings
        self._asr_model = settings.asr.get("model", "the speech model")
        self._clock = clock
        self._reply_ids = itertools.count(1)
        self._reply: _Reply | None = None
        self._preempt: _Reply | None = None
        self._message_rate = RateLimiter(MESSAGES_PER_MINUTE, burst=MESSAGE_BURST, max_keys=1)
        # Set by the transport once it knows it can play audio (see ReplyVoice).
        self.voice: ReplyVoice | None = None
        self.speak = settings.tts is not False  # the client's wish; needs a voice too
        # Why there is no voice, for the error a client gets when it asks for one.
        self.no_voice_reason = "spoken replies are off on this gateway"
        # Set by a transport whose audio has a rate the client chooses (/ws PCM).
        self.on_sample_rate: Callable[[int], None] | None = None
        # The token that resumes this conversation (gateway.conversation.resume), and why
        # one the client presented could not be used: both told with session.ready.
        self.resume_token: str | None = None
        self.resume_refused: tuple[str, str] | None = None

    # --- what the client sends ---

    @property
    def speaking_replies(self) -> bool:
        return self.voice is not None and self.speak

    @property
    def busy(self) -> bool:
        """A reply is streaming, or its speech is still playing (what a drain waits for)."""
        return self._reply is not None or (self.voice is not None and self.voice.speaking)

    def send_ready(self) -> None:
        tts: dict[str, object] = {"enabled": self.speaking_replies}
        if self.voice is not None:
            tts |= {"engine": self.voice.engine, "voice": self.voice.voice}
        self.sink.send(
            protocol.session_ready(
                self.sink.id,
                asr=self._settings.asr,
                llm={"model": self.llm.model, "available": self.llm.available},
                tts=tts,
                conversation=self.resume_token,
            )
        )
        if self.resume_refused is not None:
            self.report_error(*self.resume_refused)
        if self._settings.tts and self.voice is None:  # asked for in the offer's "session"
            self.report_error("not_supported", self.no_voice_reason)

    def on_message(self, data: str | bytes, *, plain_text: bool = False) -> None:
        """A client message from the data channel or (``plain_text``) a WebSocket."""
        wait = self._message_rate.check("", self._clock())
        if wait is not None:
            self.report_error(
                "rate_limited", f"too many messages; wait {wait:.1f} s", retryable=True
            )
            return
        try:
            message = protocol.parse_client_message(data, plain_text=plain_text)
        except ProtocolError as exc:
            self.report_error(exc.code, str(exc))
            return
        self.handle(message)

    def report_error(self, code: str, message: str, *, retryable: bool = False) -> None:
        self.metrics.errors.labels(code).inc()
        self.sink.send(protocol.error(code, message, retryable=retryable))

    def handle(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Ping):
            self.sink.send(protocol.pong(message.id))
        elif isinstance(message, protocol.TextMessage):
            now = self._clock()
            self.start_reply(message.text, utterance_id=None, times=TurnTimes(now, now))
        elif isinstance(message, protocol.Cancel):
            self.cancel_reply("client")
        elif isinstance(message, protocol.HistoryClear):
            self.history.clear()
        elif isinstance(message, protocol.SessionUpdate):
            if message.sample_rate is not None and self.on_sample_rate is None:
                self.report_error(
                    "not_supported", "sample_rate is for /ws audio; WebRTC has its own"
                )
                return
            try:  # all or nothing: a refused update changes no setting
                check_language(message.language or None, self._settings.languages, self._asr_model)
                if message.voice is not None:
                    if self.voice is None:
                        self.report_error("not_supported", self.no_voice_reason)
                        return
                    self.voice.choose_voice(message.voice)
            except (UnsupportedLanguage, TTSVoiceMissing) as exc:
                self.report_error(exc.code, str(exc))
                return
            if message.sample_rate is not None and self.on_sample_rate is not None:
                self.on_sample_rate(message.sample_rate)
            if message.tts is not None:
                if message.tts and self.voice is None:
                    self.report_error("not_supported", self.no_voice_reason)
                else:
                    self.speak = message.tts
                    if not message.tts:
                        self._cut_speech()
            if message.system_prompt is not None:
                self.system_prompt = message.system_prompt
            if message.language is not None:
                self.language = message.language or None

    # --- what the voice pipeline reports ---

    def on_speech_started(self) -> None:
        self.cancel_reply("barge-in")

    def on_transcript(self, utterance_id: str, text: str, times: TurnTimes) -> None:
        held = self._preempt
        if held is not None and held.utterance_id == utterance_id and held.prompt == text:
            self._release(held, times)
        else:
            self.withdraw_preempt()
            self.start_reply(text, utterance_id=utterance_id, times=times)

    def preempt(self, utterance_id: str, text: str) -> None:
        """Start answering ``text`` before its turn is final; nothing is sent until
        :meth:`on_transcript` confirms it. Not while a reply streams or another is held."""
        if self._reply is not None or self._preempt is not None or not text:
            return
        messages = self.history.messages(self.system_prompt)
        messages.append({"role": "user", "content": text})
        reply = _Reply(f"r{next(self._reply_ids)}", utterance_id, TurnTimes(0.0, 0.0))
        reply.prompt, reply.released = text, asyncio.Event()
        self._preempt = reply
        reply.task = self.sink.spawn(self._run(reply, messages), f"preempt-{reply.id}")

    def withdraw_preempt(self, utterance_id: str | None = None) -> None:
        """Drop the held answer (of ``utterance_id`` only, when given): the person went on,
        or the turn ended with other words or none."""
        held = self._preempt
        if held is not None and (utterance_id is None or held.utterance_id == utterance_id):
            self._withdraw(held)

    def _withdraw(self, reply: _Reply) -> None:
        if self._preempt is not reply:  # released, or already withdrawn for a newer one
            return
        self._preempt = None
        if reply.task is not None:
            reply.task.cancel()
        self.metrics.preemptive_replies.labels("wasted").inc()

    def _release(self, reply: _Reply, times: TurnTimes) -> None:
        self._preempt = None
        self.cancel_reply("barge-in")
        self.history.add_user(text=reply.prompt or "")
        reply.times, reply.released_at = times, self._clock()
        self._reply = reply
        self.metrics.preemptive_replies.labels("used").inc()
        self.sink.send(protocol.reply_started(reply.id, reply.utterance_id))
        if self.voice is not None and self.speak:
            self.voice.begin(reply.id, times)
        if reply.parts:  # what arrived while the turn was undecided, as one piece
            self._send_delta(reply, "".join(reply.parts))
        assert reply.released is not None
        reply.released.set()

    # --- replies ---

    def start_reply(self, text: str, *, utterance_id: str | None, times: TurnTimes) -> None:
        self.cancel_reply("barge-in" if utterance_id else "client")
        self.history.add_user(text)
        reply = _Reply(f"r{next(self._reply_ids)}", utterance_id, times)
        self._reply = reply
        self.sink.send(protocol.reply_started(reply.id, utterance_id))
        if self.voice is not None and self.speak:
            self.voice.begin(reply.id, times)
        messages = self.history.messages(self.system_prompt)
        reply.task = self.sink.spawn(self._run(reply, messages), f"reply-{reply.id}")

    def cancel_reply(self, reason: protocol.CancelReason) -> None:
        """Stop the reply in progress and its speech, whichever is still going."""
        reply = self._reply
        heard = self._cut_speech(finished=reply is None)
        if reply is None:
            return
        self._reply = None
        if reply.task is not None:
            reply.task.cancel()
        self._end_cancelled(reply, reason, heard)

    def _cut_speech(self, *, finished: bool = True) -> str | None:
        """Silence the voice; returns what of the reply the person heard, if it was being
        spoken. A reply whose text had ended is already in history whole: cut to that."""
        cut = self.voice.cut() if self.voice is not None else None
        if cut is None:
            return None
        _reply_id, heard = cut
        if finished:
            self.history.revise_last_answer(heard, interrupted=True)
        return heard

    def _end_cancelled(
        self, reply: _Reply, reason: protocol.CancelReason, heard: str | None = None
    ) -> None:
        # Spoken: history keeps what the person heard; text only: what was sent.
        said = reply.text if heard is None else heard
        if said:
            self.history.add_assistant(said, interrupted=True)
        self.metrics.replies.labels("cancelled").inc()
        self.sink.send(protocol.reply_cancelled(reply.id, reason))

    def _fail(self, reply: _Reply, code: str, message: str, retryable: bool) -> None:
        if self._reply is reply:  # not already cancelled by barge-in or the client
            self._reply = None
            self._end_cancelled(reply, "error", self._cut_speech(finished=False))
            self.report_error(code, message, retryable=retryable)

    def _send_delta(self, reply: _Reply, piece: str) -> None:
        self.sink.send(protocol.reply_delta(reply.id, piece))
        if self.voice is not None:
            self.voice.add(reply.id, piece)

    async def _run(self, reply: _Reply, messages: list[dict[str, str]]) -> None:
        started = self._clock()
        first: float | None = None
        try:
            async with contextlib.aclosing(self.llm.stream(messages)) as pieces:
                async for piece in pieces:
                    if reply is not self._reply and reply is not self._preempt:
                        return  # cancelled or withdrawn while this piece was on its way
                    if first is None:
                        first = self._clock()
                    reply.parts.append(piece)
                    if reply.released is None or reply.released.is_set():
                        self._send_delta(reply, piece)
                    # Pieces already buffered come without a pause: let the session's
                    # writer send this one before the next, or the outbox fills and drops.
                    await asyncio.sleep(0)
        except LLMError as exc:
            if self._held(reply):
                self._withdraw(reply)  # the real turn will try again
                return
            self._fail(reply, exc.code, str(exc), exc.retryable)
            logger.warning("[%s] reply %s failed: %s", self.sink.id, reply.id, exc)
            return
        except Exception:  # a bug: the reply must still end, and the session go on
            logger.exception("[%s] reply %s failed", self.sink.id, reply.id)
            if self._held(reply):
                self._withdraw(reply)
                return
            self._fail(reply, "internal", "the answer failed; try again", True)
            return
        if reply.released is not None and not await self._until_released(reply):
            return
        if self._reply is not reply:
            return  # cancelled while the last piece was being handled
        self._reply = None
        done = self._clock()
        # What the client saw: a preemptive answer's first piece no earlier than its release.
        seen = max(first or done, reply.released_at or 0.0)
        timings = {
            "llm_first_token_ms": elapsed_ms(started, first or done),
            "llm_total_ms": elapsed_ms(started, done),
            # From the end of speech (what the person waits), and from the turn decision.
            "speech_end_to_first_token_ms": elapsed_ms(reply.times.speech_end, seen),
            "endpoint_to_first_token_ms": elapsed_ms(reply.times.decided, seen),
        }
        self.history.add_assistant(reply.text)
        if self.voice is not None:
            self.voice.finish(reply.id)  # the rest of the text is spoken
            timings |= self.voice.timings(reply.id)
        self.metrics.replies.labels("done").inc()
        if first is not None:
            self.metrics.llm_first_token.observe(first - started)
            self.metrics.endpoint_to_first_token.observe(seen - reply.times.decided)
            self.metrics.speech_end_to_first_token.observe(seen - reply.times.speech_end)
        self.sink.send(protocol.reply_done(reply.id, reply.text, timings))
        logger.info(
            "[%s] reply %s: %d chars, first token %.0f ms, total %.0f ms",
            self.sink.id,
            reply.id,
            len(reply.text),
            timings["llm_first_token_ms"],
            timings["llm_total_ms"],
        )

    @staticmethod
    def _held(reply: _Reply) -> bool:
        """A preemptive answer not yet released: nobody has seen it."""
        return reply.released is not None and not reply.released.is_set()

    async def _until_released(self, reply: _Reply) -> bool:
        """A preemptive answer that finished before its turn: wait for the verdict."""
        assert reply.released is not None
        try:
            await asyncio.wait_for(reply.released.wait(), PREEMPT_HOLD_S)
        except TimeoutError:
            self._withdraw(reply)
            return False
        return True


def elapsed_ms(start: float, end: float) -> float:
    """Milliseconds between two ``time.monotonic`` readings, as events carry them."""
    return round(1000 * (end - start), 1)
