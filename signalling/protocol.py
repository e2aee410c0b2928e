"""The data-channel protocol (DESIGN.md): events the gateway sends, and parsing what clients
send. Pure: JSON text in, typed messages out; dicts out for events.

Every client message is a JSON object with a ``type``. Anything else — not JSON, too large,
an unknown type, a field of the wrong type — raises :class:`ProtocolError`, which the
session turns into an ``error`` event before carrying on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from signalling.errors import OfferError, ProtocolError
from signalling.jsonvalues import json_type, reject_constant
from signalling.offer import parse_session, unknown_keys

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024
# What one event may weigh: RFC 8841's default max-message-size, which every WebRTC client
# accepts (Chrome takes 256 KiB, Firefox more). A longer text is cut, and says so.
MAX_EVENT_BYTES = 64 * 1024
MAX_TEXT_CHARS = 4000
# What /ws audio (s16le mono, both ways) may be sent at; 16 kHz until a session.update.
SAMPLE_RATES = (8_000, 16_000, 24_000, 48_000)

Event = dict[str, Any]


# --- server → client ---


def session_ready(
    session_id: str,
    asr: Mapping[str, str],
    llm: Mapping[str, Any],
    tts: Mapping[str, Any],
    conversation: str | None = None,
) -> Event:
    """``conversation``: the token that resumes this conversation from a new session."""
    event: Event = {
        "type": "session.ready",
        "session_id": session_id,
        "protocol": PROTOCOL_VERSION,
        "asr": dict(asr),
        "llm": dict(llm),
        "tts": dict(tts),
    }
    if conversation is not None:
        event["conversation"] = conversation
    return event


def speech_started(utterance_id: str) -> Event:
    return {"type": "speech.started", "utterance_id": utterance_id}


# What ended a turn: a fixed silence, or the transcript or the audio model judging it over.
EndOfTurn = Literal["silence", "text", "model"]


def speech_stopped(utterance_id: str, end_of_turn: EndOfTurn = "silence") -> Event:
    return {"type": "speech.stopped", "utterance_id": utterance_id, "end_of_turn": end_of_turn}


def transcript_partial(utterance_id: str, text: str, stable_chars: int) -> Event:
    """A live caption: ``text[:stable_chars]`` will not change; the rest may."""
    return {
        "type": "transcript.partial",
        "utterance_id": utterance_id,
        "text": text,
        "stable_chars": stable_chars,
    }


def transcript_final(utterance_id: str, text: str, timings: Mapping[str, float]) -> Event:
    return {
        "type": "transcript.final",
        "utterance_id": utterance_id,
        "text": text,
        "timings": dict(timings),
    }


CancelReason = Literal["barge-in", "client", "error"]


def reply_started(reply_id: str, utterance_id: str | None) -> Event:
    return {"type": "reply.started", "reply_id": reply_id, "utterance_id": utterance_id}


def reply_delta(reply_id: str, text: str) -> Event:
    return {"type": "reply.delta", "reply_id": reply_id, "text": text}


def reply_done(reply_id: str, text: str, timings: Mapping[str, float]) -> Event:
    return {"type": "reply.done", "reply_id": reply_id, "text": text, "timings": dict(timings)}


def reply_cancelled(reply_id: str, reason: CancelReason) -> Event:
    return {"type": "reply.cancelled", "reply_id": reply_id, "reason": reason}


def reply_audio_started(reply_id: str, timings: Mapping[str, float]) -> Event:
    return {"type": "reply.audio.started", "reply_id": reply_id, "timings": dict(timings)}


def reply_audio_done(reply_id: str, *, interrupted: bool) -> Event:
    """The spoken reply ended on the audio track: played out, or cut (``interrupted``)."""
    return {"type": "reply.audio.done", "reply_id": reply_id, "interrupted": interrupted}


def error(code: str, message: str, *, retryable: bool = False) -> Event:
    return {"type": "error", "code": code, "message": message, "retryable": retryable}


def pong(message_id: object) -> Event:
    return {"type": "pong", "id": message_id}


# Why the gateway ended a session, as the client is told (``signalling.ending`` maps the
# gateway's own reasons onto these): enough to decide whether reconnecting makes sense.
EndedReason = Literal["client", "idle-timeout", "max-duration", "shutdown", "worker-lost", "error"]


def session_ended(reason: EndedReason) -> Event:
    """The last event of every session the gateway ends, on every transport."""
    return {"type": "session.ended", "reason": reason}


def encode(event: Event) -> str:
    """JSON text of at most :data:`MAX_EVENT_BYTES` bytes. An event over it (a very long
    ``reply.done``) keeps as much of its ``text`` as fits and gains ``"truncated": true``;
    the client has had every piece of a reply as ``reply.delta`` already."""
    text = _dumps(event)
    if len(text) * 4 <= MAX_EVENT_BYTES or _size(text) <= MAX_EVENT_BYTES:
        return text
    whole = event.get("text")
    if not isinstance(whole, str):
        return _dumps(error("event_too_large", f"a {event.get('type')} event was too large"))
    lo, hi = 0, len(whole)  # the longest prefix that fits: binary search on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _size(_dumps({**event, "text": whole[:mid], "truncated": True})) <= MAX_EVENT_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return _dumps({**event, "text": whole[:lo], "truncated": True})


def _dumps(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --- client → server ---


@dataclass(frozen=True)
class TextMessage:
    text: str


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class SessionUpdate:
    system_prompt: str | None = None
    language: str | None = None
    tts: bool | None = None
    voice: str | None = None
    sample_rate: int | None = None  # of /ws audio, both ways


@dataclass(frozen=True)
class HistoryClear:
    pass


@dataclass(frozen=True)
class Ping:
    id: str | int | None = None


ClientMessage = TextMessage | Cancel | SessionUpdate | HistoryClear | Ping

UPDATE_KEYS = frozenset(f.name for f in fields(SessionUpdate))
"""The keys ``session.update`` takes (besides ``type``)."""


def parse_client_message(data: str | bytes, *, plain_text: bool = False) -> ClientMessage:
    """``plain_text``: text that is not JSON is a user message (``/ws``, so that wscat
    works); on the data channel it is an error."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(data, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        if plain_text and isinstance(data, str):
            return TextMessage(
                _text({"text": data.strip()}, "text", MAX_TEXT_CHARS, required=True) or ""
            )
        raise ProtocolError(f"message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "text":
        return TextMessage(_text(obj, "text", MAX_TEXT_CHARS, required=True) or "")
    if kind == "cancel":
        return Cancel()
    if kind == "history.clear":
        return HistoryClear()
    if kind == "ping":
        ident = obj.get("id")
        if ident is not None and (not isinstance(ident, str | int) or isinstance(ident, bool)):
            raise ProtocolError('"id" of ping must be a string or an integer')
        if isinstance(ident, str) and len(ident) > 128:
            raise ProtocolError('"id" of ping is longer than 128 characters')
        if isinstance(ident, str):
            _check_unicode(ident, "id")
        return Ping(ident)
    if kind == "session.update":
        # The same rules as the "session" overrides of an offer: one validator for both.
        # null leaves a setting as it is.
        given = {k: v for k, v in obj.items() if k != "type" and v is not None}
        if "echo_cancellation" in given:
            raise ProtocolError('"echo_cancellation" describes the microphone: offer it only')
        rate = _sample_rate(given.pop("sample_rate", None))
        if "conversation" in given:
            raise ProtocolError(
                '"conversation" resumes a conversation: present it when the session opens'
            )
        # Checked here, not by parse_session, whose message would list the offer's keys.
        unknown = unknown_keys(given, UPDATE_KEYS, '"session.update"')
        if unknown:
            raise ProtocolError(unknown)
        try:
            checked = parse_session(given)
        except OfferError as exc:
            raise ProtocolError(str(exc).replace('"session', '"session.update', 1)) from None
        language, prompt, tts, voice = (
            checked.get(k) for k in ("language", "system_prompt", "tts", "voice")
        )
        return SessionUpdate(
            system_prompt=prompt if isinstance(prompt, str) else None,
            language=language if isinstance(language, str) else None,
            tts=tts if isinstance(tts, bool) else None,
            voice=voice if isinstance(voice, str) else None,
            sample_rate=rate,
        )
    if not isinstance(kind, str):
        raise ProtocolError('message has no "type" string')
    raise ProtocolError(f"unknown message type {kind[:40]!r}")


def _sample_rate(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in SAMPLE_RATES)
        scalar = isinstance(value, int | float | str)
        shown = json.dumps(value)[:20] if scalar else json_type(value)
        raise ProtocolError(f'"sample_rate" must be one of {allowed} (Hz), got {shown}')
    return value


def _text(obj: Mapping[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProtocolError(f'"{key}" must be a non-empty string')
    if len(value) > limit:
        raise ProtocolError(f'"{key}" is longer than {limit} characters')
    return _check_unicode(value, key)


def _check_unicode(value: str, key: str) -> str:
    # JSON's "\ud800" escape makes a lone surrogate, which cannot be encoded as UTF-8:
    # echoed back (pong, a transcript) it would break the data channel's send.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f'"{key}" holds a lone surrogate, which is not text') from None
    return value
