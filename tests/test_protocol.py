"""The data-channel protocol (``signalling/protocol.py``): client messages parsed or refused
with a clear :class:`ProtocolError`, and events with exactly the fields DESIGN.md lists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError
from signalling import protocol
from signalling.protocol import (
    MAX_MESSAGE_BYTES,
    Cancel,
    ClientMessage,
    HistoryClear,
    Ping,
    SessionUpdate,
    TextMessage,
    parse_client_message,
)


def refused(data: str | bytes, *, plain_text: bool = False) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(data, plain_text=plain_text)
    assert info.value.code == "bad_message"
    return str(info.value)


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


# --- client messages that parse ---


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        ({"type": "text", "text": "What time is it?"}, TextMessage("What time is it?")),
        ({"type": "text", "text": "  padded  "}, TextMessage("  padded  ")),
        ({"type": "text", "text": "héllo ✓ 🎤"}, TextMessage("héllo ✓ 🎤")),
        ({"type": "text", "text": "x" * 4000}, TextMessage("x" * 4000)),
        ({"type": "text", "text": "hi", "extra": 1}, TextMessage("hi")),
        ({"type": "cancel"}, Cancel()),
        ({"type": "history.clear"}, HistoryClear()),
        ({"type": "ping"}, Ping(None)),
        ({"type": "ping", "id": None}, Ping(None)),
        ({"type": "ping", "id": 7}, Ping(7)),
        ({"type": "ping", "id": -1}, Ping(-1)),
        ({"type": "ping", "id": "abc"}, Ping("abc")),
        ({"type": "ping", "id": "x" * 128}, Ping("x" * 128)),
        ({"type": "session.update"}, SessionUpdate()),
        (
            {"type": "session.update", "system_prompt": "Be brief.", "language": "fr", "tts": True},
            SessionUpdate(system_prompt="Be brief.", language="fr", tts=True),
        ),
        ({"type": "session.update", "tts": False}, SessionUpdate(tts=False)),
        (
            {"type": "session.update", "system_prompt": None, "language": None, "tts": None},
            SessionUpdate(),
        ),
        ({"type": "session.update", "language": "x" * 16}, SessionUpdate(language="x" * 16)),
    ],
)
def test_client_message_is_parsed(message: dict[str, Any], parsed: ClientMessage) -> None:
    assert parse_client_message(dumps(message)) == parsed
    assert parse_client_message(dumps(message).encode("utf-8")) == parsed


def test_bytes_in_utf_16_are_json_too() -> None:
    data = dumps({"type": "text", "text": "hi"}).encode("utf-16")
    assert parse_client_message(data) == TextMessage("hi")


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    head = '{"type":"ping","id":"x"}'
    data = head + " " * (MAX_MESSAGE_BYTES - len(head))
    assert len(data.encode()) == MAX_MESSAGE_BYTES
    assert parse_client_message(data) == Ping("x")


# --- client messages that are refused ---


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "message is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("hello", "message is not valid JSON: Expecting value"),
        ('{"type": "text", ', "message is not valid JSON"),
        ("{'type': 'cancel'}", "message is not valid JSON"),
        (b"\xff\xfe\xfd", "message is not valid JSON"),
        (b'{"type":"text","text":"\xe9"}', "message is not valid JSON"),
        ('{"type":"ping","id":NaN}', "message is not valid JSON: NaN is not allowed"),
        ('{"type":"ping","id":Infinity}', "message is not valid JSON: Infinity is not allowed"),
        ('{"type":"ping","id":-Infinity}', "message is not valid JSON: -Infinity is not allowed"),
        ("[" * 10_000 + "]" * 10_000, "exceeds"),
        ("[" * 5000 + "]" * 5000, "message is not valid JSON"),
        ("[]", "message must be a JSON object, got list"),
        ('"text"', "message must be a JSON object, got str"),
        ("42", "message must be a JSON object, got int"),
        ("null", "message must be a JSON object, got NoneType"),
        ("{}", 'message has no "type" string'),
        ('{"text": "hi"}', 'message has no "type" string'),
        ('{"type": 1}', 'message has no "type" string'),
        ('{"type": null}', 'message has no "type" string'),
        ('{"type": ["text"]}', 'message has no "type" string'),
        ('{"type": "shout"}', "unknown message type 'shout'"),
        ('{"type": "TEXT", "text": "hi"}', "unknown message type 'TEXT'"),
        ('{"type": "' + "z" * 100 + '"}', "unknown message type '" + "z" * 40 + "'"),
        ('{"type": "text"}', '"text" must be a non-empty string'),
        ('{"type": "text", "text": null}', '"text" must be a non-empty string'),
        ('{"type": "text", "text": ""}', '"text" must be a non-empty string'),
        ('{"type": "text", "text": "  \\n "}', '"text" must be a non-empty string'),
        ('{"type": "text", "text": 5}', '"text" must be a non-empty string'),
        ('{"type": "text", "text": ["a"]}', '"text" must be a non-empty string'),
        (dumps({"type": "text", "text": "x" * 4001}), '"text" is longer than 4000 characters'),
        ('{"type": "text", "text": "a\\ud800b"}', '"text" holds a lone surrogate'),
        ('{"type": "ping", "id": true}', '"id" of ping must be a string or an integer'),
        ('{"type": "ping", "id": 1.5}', '"id" of ping must be a string or an integer'),
        ('{"type": "ping", "id": {}}', '"id" of ping must be a string or an integer'),
        (dumps({"type": "ping", "id": "x" * 129}), '"id" of ping is longer than 128 characters'),
        ('{"type": "ping", "id": "\\udc00"}', '"id" holds a lone surrogate'),
        ('{"type": "session.update", "tts": "yes"}', '"session.update.tts" must be true or false'),
        ('{"type": "session.update", "tts": 1}', '"session.update.tts" must be true or false'),
        ('{"type": "session.update", "language": 5}', '"session.update.language" must be a string'),
        (
            dumps({"type": "session.update", "language": "x" * 36}),
            '"session.update.language" is too long: 36 characters, limit 35',
        ),
        (
            dumps({"type": "session.update", "language": "en us"}),
            '"session.update.language" is not a language code',
        ),
        (
            dumps({"type": "session.update", "system_prompt": "x" * 8001}),
            '"session.update.system_prompt" is too long: 8001 characters, limit 8000',
        ),
        (
            '{"type": "session.update", "pitch": "x", "speed": 2}',
            '"session.update" has unknown keys "pitch", "speed"',
        ),
        (
            '{"type": "session.update", "\\ud800": 1}',
            '"session.update" has unknown key',
        ),
    ],
)
def test_bad_message_is_refused_clearly(data: str | bytes, message: str) -> None:
    assert message in refused(data)


def test_oversize_message_is_refused_before_parsing() -> None:
    data = dumps({"type": "text", "text": "x" * MAX_MESSAGE_BYTES})
    assert refused(data) == f"message of {len(data)} bytes exceeds 16384"
    # Measured in UTF-8 bytes, not characters: 6000 x "é" is 12000 bytes plus the rest.
    wide = '{"type":"ping","id":"x"}' + " " * 4400 + "é" * 6000
    assert len(wide) < MAX_MESSAGE_BYTES < len(wide.encode())
    assert refused(wide) == f"message of {len(wide.encode())} bytes exceeds 16384"
    assert "exceeds 16384" in refused(data.encode())


# --- plain text (the /ws route, so that wscat works) ---


def test_plain_text_is_a_text_message_where_allowed() -> None:
    assert parse_client_message("  hello there \n", plain_text=True) == TextMessage("hello there")
    assert parse_client_message('{"type":"cancel"}', plain_text=True) == Cancel()
    assert "not valid JSON" in refused("hello")
    assert '"text" must be a non-empty string' in refused("   ", plain_text=True)
    assert "not valid JSON" in refused(b"hello", plain_text=True)
    assert "must be a JSON object" in refused("42", plain_text=True)


# --- property: nothing but ProtocolError, and every answer can be sent ---


def check_answer(data: str | bytes, *, plain_text: bool = False) -> None:
    """Parse, and build what the session would send back: it must encode as UTF-8."""
    try:
        message = parse_client_message(data, plain_text=plain_text)
    except ProtocolError as exc:
        event = protocol.error(exc.code, str(exc))
    else:
        event = protocol.pong(message.id) if isinstance(message, Ping) else {"ok": repr(message)}
        if isinstance(message, TextMessage):
            protocol.encode(protocol.transcript_final("u1", message.text, {})).encode("utf-8")
        if isinstance(message, SessionUpdate):
            for text in (message.system_prompt, message.language):
                if text is not None:
                    text.encode("utf-8")
    protocol.encode(event).encode("utf-8")


# Any code point, lone surrogates included (JSON's "\\ud800" escape makes one). st.text()
# leaves them out, and st.text() over a union draws them about once in 150 strings; joining
# a list of characters keeps the two alphabets apart, so most strings hold one.
any_text = st.lists(
    st.characters(exclude_categories=[]) | st.characters(categories=["Cs"]), max_size=40
).map("".join)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)
field_value = any_text | json_values
message_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "cancel", "ping", "session.update", "history.clear", "nope", ""]
        )
    },
    optional={
        "text": field_value,
        "id": field_value,
        "system_prompt": field_value,
        "language": field_value,
        "tts": field_value,
        "extra": field_value,
    },
)


@settings(max_examples=300, deadline=None, database=None)
@given(any_text)
def test_any_text_gives_a_message_or_protocol_error(data: str) -> None:
    check_answer(data)
    check_answer(data, plain_text=True)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary())
def test_any_bytes_give_a_message_or_protocol_error(data: bytes) -> None:
    check_answer(data)


@settings(max_examples=300, deadline=None, database=None)
@given(json_values)
def test_any_json_gives_a_message_or_protocol_error(value: object) -> None:
    check_answer(json.dumps(value))
    check_answer(json.dumps(value).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None, database=None)
@given(message_like)
def test_any_message_like_object_gives_a_message_or_protocol_error(value: object) -> None:
    check_answer(json.dumps(value))  # ASCII-escaped, so lone surrogates arrive as \\udXXX
    check_answer(json.dumps(value, ensure_ascii=False))


# --- events (server -> client) ---


def test_session_ready() -> None:
    event = protocol.session_ready(
        "s1",
        asr={"engine": "openai-whisper", "model": "tiny.en"},
        llm={"model": "llama3.2", "available": True},
        tts={"enabled": False},
    )
    assert event == {
        "type": "session.ready",
        "session_id": "s1",
        "protocol": 1,
        "asr": {"engine": "openai-whisper", "model": "tiny.en"},
        "llm": {"model": "llama3.2", "available": True},
        "tts": {"enabled": False},
    }


def test_reply_audio_events() -> None:
    assert protocol.reply_audio_started("r1", {"tts_first_audio_ms": 80.0}) == {
        "type": "reply.audio.started",
        "reply_id": "r1",
        "timings": {"tts_first_audio_ms": 80.0},
    }
    assert protocol.reply_audio_done("r1", interrupted=True) == {
        "type": "reply.audio.done",
        "reply_id": "r1",
        "interrupted": True,
    }


def test_speech_and_transcript_events() -> None:
    assert protocol.speech_started("u1") == {"type": "speech.started", "utterance_id": "u1"}
    assert protocol.speech_stopped("u1", "model") == {
        "type": "speech.stopped",
        "utterance_id": "u1",
        "end_of_turn": "model",
    }
    assert protocol.speech_stopped("u1")["end_of_turn"] == "silence"
    assert protocol.transcript_partial("u1", "What is the", 8) == {
        "type": "transcript.partial",
        "utterance_id": "u1",
        "text": "What is the",
        "stable_chars": 8,
    }
    timings = {"speech_ms": 1200.0, "asr_ms": 310.5}
    event = protocol.transcript_final("u1", "Hello.", timings)
    assert event == {
        "type": "transcript.final",
        "utterance_id": "u1",
        "text": "Hello.",
        "timings": {"speech_ms": 1200.0, "asr_ms": 310.5},
    }
    assert event["timings"] is not timings  # a copy: later changes do not leak in


def test_reply_events() -> None:
    assert protocol.reply_started("r1", "u1") == {
        "type": "reply.started",
        "reply_id": "r1",
        "utterance_id": "u1",
    }
    assert protocol.reply_started("r2", None) == {
        "type": "reply.started",
        "reply_id": "r2",
        "utterance_id": None,
    }
    assert protocol.reply_delta("r1", "Hel") == {
        "type": "reply.delta",
        "reply_id": "r1",
        "text": "Hel",
    }
    assert protocol.reply_done("r1", "Hello.", {"llm_first_token_ms": 80.0}) == {
        "type": "reply.done",
        "reply_id": "r1",
        "text": "Hello.",
        "timings": {"llm_first_token_ms": 80.0},
    }
    for reason in ("barge-in", "client", "error"):
        assert protocol.reply_cancelled("r1", reason) == {
            "type": "reply.cancelled",
            "reply_id": "r1",
            "reason": reason,
        }


def test_error_and_pong_events() -> None:
    assert protocol.error("bad_message", "nope") == {
        "type": "error",
        "code": "bad_message",
        "message": "nope",
        "retryable": False,
    }
    assert protocol.error("asr_busy", "later", retryable=True)["retryable"] is True
    assert protocol.pong(7) == {"type": "pong", "id": 7}
    assert protocol.pong("a") == {"type": "pong", "id": "a"}
    assert protocol.pong(None) == {"type": "pong", "id": None}


def test_encode_is_compact_utf8_json() -> None:
    text = protocol.encode(protocol.transcript_final("u1", "Café ✓", {"asr_ms": 1.5}))
    assert text == (
        '{"type":"transcript.final","utterance_id":"u1","text":"Café ✓","timings":{"asr_ms":1.5}}'
    )
    assert json.loads(text)["text"] == "Café ✓"


def test_session_update_voice() -> None:
    update = protocol.parse_client_message('{"type": "session.update", "voice": "af_heart"}')
    assert update == protocol.SessionUpdate(voice="af_heart")
    with pytest.raises(ProtocolError, match="voice name"):
        protocol.parse_client_message('{"type": "session.update", "voice": "two words"}')
    with pytest.raises(ProtocolError, match="voice name"):
        protocol.parse_client_message(json.dumps({"type": "session.update", "voice": "v" * 65}))


def test_echo_cancellation_is_for_the_offer_only() -> None:
    with pytest.raises(ProtocolError, match="offer it only"):
        protocol.parse_client_message('{"type": "session.update", "echo_cancellation": true}')


def test_an_unknown_key_lists_exactly_what_session_update_takes() -> None:
    # Not the offer's keys: "conversation" and "echo_cancellation" are refused here, and
    # "sample_rate" (of /ws audio) is taken here only.
    assert refused('{"type": "session.update", "speed": 2}') == (
        '"session.update" has unknown key "speed"; allowed: "language", "sample_rate", '
        '"system_prompt", "tts", "voice"'
    )
    assert set(protocol.UPDATE_KEYS) == {"language", "sample_rate", "system_prompt", "tts", "voice"}
    update = parse_client_message('{"type": "session.update", "sample_rate": 24000}')
    assert update == SessionUpdate(sample_rate=24_000)
    assert "present it when the session opens" in refused(
        '{"type": "session.update", "conversation": "t"}'
    )


def test_a_bad_sample_rate_names_its_json_type() -> None:
    assert refused('{"type": "session.update", "sample_rate": [16000]}') == (
        '"sample_rate" must be one of 8000, 16000, 24000, 48000 (Hz), got an array'
    )
    assert refused('{"type": "session.update", "sample_rate": 44100}').endswith("got 44100")
