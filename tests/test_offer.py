"""Tests for :mod:`signalling.offer`: the ``POST /offer`` body is checked before aiortc."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from dataclasses import dataclass

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import OfferError
from signalling.errors import OfferTooLarge
from signalling.offer import (
    MAX_BODY_BYTES,
    MAX_MEDIA_SECTIONS,
    MAX_SDP_BYTES,
    MAX_SDP_LINES,
    Offer,
    parse_offer,
    parse_sdp_offer,
)

_FP_CHROME = (
    "93:90:EF:32:AD:DF:32:BF:DE:A7:86:BC:1E:20:67:95:"
    "92:49:80:68:BC:BF:CD:35:7E:A1:0A:B6:4E:A3:5E:47"
)
_FP_FIREFOX = (
    "16:E5:F6:0F:20:7A:1A:00:73:45:1C:35:A9:D3:15:D1:"
    "7F:DC:17:D7:FA:B6:64:49:B0:0C:DF:AA:DC:8B:24:9E"
)

# What Chrome (M12x) posts once the microphone is granted and ICE gathering is complete:
# audio (Opus first, RED, the G.711 fallbacks, DTMF) and one data channel, bundled. With the
# mic permission granted, host candidates carry real addresses (documentation ranges here).
CHROME_OFFER = (
    "\r\n".join(
        [
            "v=0",
            "o=- 4215775240449105457 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0 1",
            "a=extmap-allow-mixed",
            "a=msid-semantic: WMS 4bd5b2c0-7c8f-4b1e-9f0e-3f1c2c9f5a10",
            "m=audio 49203 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "c=IN IP4 192.0.2.23",
            "a=rtcp:9 IN IP4 0.0.0.0",
            "a=candidate:2999745851 1 udp 2122260223 192.0.2.23 49203 typ host generation 0"
            " network-id 1 network-cost 10",
            "a=candidate:1357912468 1 udp 2122197247 2001:db8::23 56113 typ host generation 0"
            " network-id 2 network-cost 10",
            "a=candidate:4233069003 1 tcp 1518280447 192.0.2.23 9 typ host tcptype active"
            " generation 0 network-id 1 network-cost 10",
            "a=ice-ufrag:Fq3n",
            "a=ice-pwd:x8Zd3uQ1Jt5yV0mK2bN7cLp9",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {_FP_CHROME}",
            "a=setup:actpass",
            "a=mid:0",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=sendrecv",
            "a=msid:4bd5b2c0-7c8f-4b1e-9f0e-3f1c2c9f5a10 9a1f6c3e-2d4b-4e8a-b7c6-5d4e3f2a1b0c",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=rtpmap:111 opus/48000/2",
            "a=rtcp-fb:111 transport-cc",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtpmap:63 red/48000/2",
            "a=fmtp:63 111/111",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:13 CN/8000",
            "a=rtpmap:110 telephone-event/48000",
            "a=rtpmap:126 telephone-event/8000",
            "a=ssrc:1001383416 cname:Yd8mIu2rT1u3kq0b",
            "a=ssrc:1001383416 msid:4bd5b2c0-7c8f-4b1e-9f0e-3f1c2c9f5a10"
            " 9a1f6c3e-2d4b-4e8a-b7c6-5d4e3f2a1b0c",
            "m=application 49203 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 192.0.2.23",
            "a=candidate:2999745851 1 udp 2122260223 192.0.2.23 49203 typ host generation 0"
            " network-id 1 network-cost 10",
            "a=candidate:1357912468 1 udp 2122197247 2001:db8::23 56113 typ host generation 0"
            " network-id 2 network-cost 10",
            "a=candidate:4233069003 1 tcp 1518280447 192.0.2.23 9 typ host tcptype active"
            " generation 0 network-id 1 network-cost 10",
            "a=ice-ufrag:Fq3n",
            "a=ice-pwd:x8Zd3uQ1Jt5yV0mK2bN7cLp9",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {_FP_CHROME}",
            "a=setup:actpass",
            "a=mid:1",
            "a=sctp-port:5000",
            "a=max-message-size:262144",
        ]
    )
    + "\r\n"
)

# Firefox's shape differs: fingerprint and ice-options at session level, extmap with a
# direction, "UDP"/"TCP" in capitals, braces in msid and cname, end-of-candidates.
FIREFOX_OFFER = (
    "\r\n".join(
        [
            "v=0",
            "o=mozilla...THIS_IS_SDPARTA-128.0 5464405349435489032 0 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            f"a=fingerprint:sha-256 {_FP_FIREFOX}",
            "a=group:BUNDLE 0 1",
            "a=ice-options:trickle",
            "a=msid-semantic:WMS *",
            "m=audio 53050 UDP/TLS/RTP/SAVPF 109 9 0 8 101",
            "c=IN IP4 198.51.100.30",
            "a=candidate:0 1 UDP 2122252543 198.51.100.30 53050 typ host",
            "a=candidate:1 1 TCP 2105524479 198.51.100.30 9 typ host tcptype active",
            "a=sendrecv",
            "a=end-of-candidates",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level",
            "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1",
            "a=fmtp:101 0-15",
            "a=ice-pwd:7ab1e5a4b0b1f4d6c0c1f6f7c2e8d9a0",
            "a=ice-ufrag:3c8e5f1a",
            "a=mid:0",
            "a=msid:{5f5c2b1a-0d9e-4c8b-a7f6-e5d4c3b2a190} {a2b1c0d9-e8f7-4a6b-9c5d-4e3f2a1b0c9d}",
            "a=rtcp-mux",
            "a=rtpmap:109 opus/48000/2",
            "a=rtpmap:9 G722/8000/1",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:101 telephone-event/8000/1",
            "a=setup:actpass",
            "a=ssrc:2655508255 cname:{6f52d6ae-3be8-4a6e-8b4e-8a0c3d3e9f2a}",
            "m=application 53050 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 198.51.100.30",
            "a=candidate:0 1 UDP 2122252543 198.51.100.30 53050 typ host",
            "a=candidate:1 1 TCP 2105524479 198.51.100.30 9 typ host tcptype active",
            "a=sendrecv",
            "a=end-of-candidates",
            "a=ice-pwd:7ab1e5a4b0b1f4d6c0c1f6f7c2e8d9a0",
            "a=ice-ufrag:3c8e5f1a",
            "a=mid:1",
            "a=setup:actpass",
            "a=sctp-port:5000",
            "a=max-message-size:1073741823",
        ]
    )
    + "\r\n"
)

STATIC_OFFERS = {"chrome": CHROME_OFFER, "firefox": FIREFOX_OFFER}

_AUDIO_M = "m=audio 49203 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"


def body(sdp: object, **extra: object) -> bytes:
    """A ``POST /offer`` body as a browser sends it (``RTCSessionDescription.toJSON()``)."""
    return json.dumps({"type": "offer", "sdp": sdp, **extra}).encode()


def lines_of(sdp: str) -> list[str]:
    return sdp.split("\r\n")[:-1]


def join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def without(sdp: str, prefix: str, after: str = "v=") -> str:
    """``sdp`` without the lines that start with ``prefix`` (from the line ``after`` on)."""
    lines = lines_of(sdp)
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    return join(lines[:start] + [line for line in lines[start:] if not line.startswith(prefix)])


def replaced(sdp: str, old: str, new: str) -> str:
    assert old in sdp, old
    return sdp.replace(old, new)


def section(sdp: str, kind: str) -> tuple[int, int]:
    """Line indexes [start, end) of the first ``m=<kind>`` section."""
    lines = lines_of(sdp)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"m={kind} "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return start, end


def without_section(sdp: str, kind: str) -> str:
    start, end = section(sdp, kind)
    lines = lines_of(sdp)
    return join(lines[:start] + lines[end:])


def only_section(sdp: str, kind: str) -> str:
    start, end = section(sdp, kind)
    return join(lines_of(sdp)[start:end])


def pcmu_only() -> str:
    """Chrome's offer with every audio codec but PCMU taken out."""
    codec = re.compile(r"a=(rtpmap|fmtp|rtcp-fb):")
    lines = [
        line
        for line in lines_of(CHROME_OFFER)
        if not codec.match(line) or line == "a=rtpmap:0 PCMU/8000"
    ]
    return replaced(join(lines), _AUDIO_M, "m=audio 49203 UDP/TLS/RTP/SAVPF 0")


def video_only() -> str:
    """Chrome's offer with its audio section turned into VP8 video, and no data channel."""
    lines = lines_of(without_section(CHROME_OFFER, "application"))
    start, _ = section(CHROME_OFFER, "audio")
    codec = re.compile(r"a=(rtpmap|fmtp|rtcp-fb):")
    kept = [line for line in lines if not codec.match(line)]
    kept[start] = "m=video 49203 UDP/TLS/RTP/SAVPF 96 97"
    kept += [
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
    ]
    return replaced(join(kept), "a=group:BUNDLE 0 1", "a=group:BUNDLE 0")


async def make_aiortc_offer() -> str:
    """A real offer from aiortc: send-only audio and one data channel, as a client makes it."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        assert isinstance(sdp, str)
        return sdp
    finally:
        await pc.close()


@pytest.fixture(scope="session")
def aiortc_offer() -> str:
    return asyncio.run(make_aiortc_offer())


@pytest.fixture(scope="session")
def base_offers(aiortc_offer: str) -> dict[str, str]:
    return {"aiortc": aiortc_offer, **STATIC_OFFERS}


# --- accepted ----------------------------------------------------------------------------


def test_aiortc_offer_is_accepted(aiortc_offer: str) -> None:
    offer = parse_offer(body(aiortc_offer))
    assert offer == Offer(sdp=aiortc_offer)
    assert dict(offer.session) == {}


@pytest.mark.parametrize("name", sorted(STATIC_OFFERS))
def test_browser_offer_is_accepted(name: str) -> None:
    sdp = STATIC_OFFERS[name]
    assert parse_offer(body(sdp)).sdp == sdp


def test_line_endings_are_normalised_to_crlf() -> None:
    lf = CHROME_OFFER.replace("\r\n", "\n")
    assert parse_offer(body(lf)).sdp == CHROME_OFFER
    mixed = lf.replace("\n", "\r", 3).rstrip("\n")  # some CR, some LF, no final newline
    assert parse_offer(body(mixed)).sdp == CHROME_OFFER
    assert parse_offer(body(CHROME_OFFER + "\r\n\r\n")).sdp == CHROME_OFFER


def session_level_transport() -> str:
    """Firefox's offer with ICE credentials, fingerprint and setup at session level only."""
    moved = ("a=ice-ufrag:", "a=ice-pwd:", "a=setup:")
    lines = lines_of(FIREFOX_OFFER)
    kept = [line for line in lines if not line.startswith(moved)]
    session_level = list(dict.fromkeys(line for line in lines if line.startswith(moved)))
    at = kept.index("t=0 0") + 1
    return join(kept[:at] + session_level + kept[at:])


def with_video() -> str:
    """Chrome's offer with a VP8 camera section added."""
    video = lines_of(video_only())
    start = next(i for i, line in enumerate(video) if line.startswith("m=video"))
    lines = [line.replace("a=mid:0", "a=mid:2") for line in video[start:]]
    return replaced(CHROME_OFFER, "BUNDLE 0 1", "BUNDLE 0 1 2") + join(lines)


VALID_VARIANTS = {
    # a browser without the mic permission yet hides its address behind an mDNS name
    "mDNS candidate": replaced(
        CHROME_OFFER, "192.0.2.23 49203 typ host", "3f1c2c9f-7b1a.local 49203 typ host"
    ),
    "session-level transport": session_level_transport(),
    "no data channel": replaced(
        without_section(CHROME_OFFER, "application"), "BUNDLE 0 1", "BUNDLE 0"
    ),
    "extra rejected audio": CHROME_OFFER
    + only_section(CHROME_OFFER, "audio")
    .replace("m=audio 49203", "m=audio 0")
    .replace("a=mid:0", "a=mid:2")
    .replace("a=sendrecv", "a=inactive"),
    # the client listens to the spoken reply and types
    "recvonly audio": replaced(CHROME_OFFER, "a=sendrecv", "a=recvonly"),
    "camera too": with_video(),
    "OPUS in capitals": replaced(CHROME_OFFER, "opus/48000/2", "OPUS/48000/2"),
    "legacy SCTP m-line": replaced(
        replaced(CHROME_OFFER, "UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000"),
        "a=sctp-port:5000\r\n",
        "a=sctpmap:5000 webrtc-datachannel 1024\r\n",
    ),
    "sha-512 fingerprint": replaced(
        CHROME_OFFER, f"sha-256 {_FP_CHROME}", f"sha-512 {_FP_CHROME}:{_FP_CHROME}"
    ),
    "setup active": CHROME_OFFER.replace("a=setup:actpass", "a=setup:active"),
}


@pytest.mark.parametrize("name", sorted(VALID_VARIANTS))
def test_other_valid_shape_is_accepted(name: str) -> None:
    sdp = VALID_VARIANTS[name]
    assert parse_offer(body(sdp)).sdp == sdp


# --- what the gateway can use: audio the client sends, or a data channel ------------------


def no_channel(sdp: str) -> str:
    """``sdp`` without its data channel (the audio keeps a=mid:0)."""
    return replaced(without_section(sdp, "application"), "BUNDLE 0 1", "BUNDLE 0")


def audio_direction(sdp: str, direction: str) -> str:
    return replaced(sdp, "a=sendrecv", f"a={direction}")


def channel_port_zero(sdp: str, *extra: str) -> str:
    """``sdp`` with its data channel at port 0, followed by ``extra`` lines."""
    start, _ = section(sdp, "application")
    lines = lines_of(sdp)
    lines[start] = lines[start].replace("m=application 49203", "m=application 0")
    return join(lines[: start + 1] + list(extra) + lines[start + 1 :])


ACCEPTED_USES = {
    "sendrecv audio": no_channel(CHROME_OFFER),
    "sendonly audio": no_channel(audio_direction(CHROME_OFFER, "sendonly")),
    "data channel only": replaced(without_section(CHROME_OFFER, "audio"), "BUNDLE 0 1", "BUNDLE 1"),
    "recvonly audio and data channel": audio_direction(CHROME_OFFER, "recvonly"),
    "inactive audio and data channel": audio_direction(CHROME_OFFER, "inactive"),
    "video and data channel": replaced(video_only(), "BUNDLE 0", "BUNDLE 0 1")
    + only_section(CHROME_OFFER, "application"),
    # Firefox with bundlePolicy "max-bundle": port 0 marks a section bundled, not rejected
    "bundle-only data channel": channel_port_zero(
        audio_direction(CHROME_OFFER, "recvonly"), "a=bundle-only"
    ),
}

_NEEDS = (
    "; it needs audio the client sends (a=sendrecv or a=sendonly, port not 0)"
    " or a data channel for typed text"
)
REFUSED_USES = {
    "recvonly audio only": (
        no_channel(audio_direction(CHROME_OFFER, "recvonly")),
        "offer gives the gateway nothing to use: the audio section at line 8 is"
        " recvonly (the client only listens) and there is no data channel" + _NEEDS,
    ),
    "inactive audio only": (
        no_channel(audio_direction(CHROME_OFFER, "inactive")),
        "the audio section at line 8 is inactive (a=inactive) and there is no data channel",
    ),
    "port-0 audio only": (
        no_channel(replaced(CHROME_OFFER, "m=audio 49203", "m=audio 0")),
        "the audio section at line 8 is rejected (port 0) and there is no data channel",
    ),
    "video only": (
        video_only(),
        "offer gives the gateway nothing to use: there is no audio section (it has: video)"
        " and no data channel" + _NEEDS,
    ),
    "recvonly audio, port-0 data channel": (
        channel_port_zero(audio_direction(CHROME_OFFER, "recvonly")),
        "is recvonly (the client only listens) and the application section at line 41 is"
        " rejected (port 0)",
    ),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_USES))
def test_offer_with_something_to_use_is_accepted(name: str) -> None:
    sdp = ACCEPTED_USES[name]
    assert parse_offer(body(sdp)).sdp == sdp


@pytest.mark.parametrize("name", sorted(REFUSED_USES))
def test_offer_with_nothing_to_use_is_refused(name: str) -> None:
    sdp, phrase = REFUSED_USES[name]
    with pytest.raises(OfferError) as caught:
        parse_offer(body(sdp))
    assert phrase in str(caught.value)
    assert len(str(caught.value)) < 300


def test_session_overrides_are_returned() -> None:
    overrides = {"language": "en", "system_prompt": "Answer in one sentence.\n", "tts": False}
    offer = parse_offer(body(CHROME_OFFER, session=overrides))
    assert dict(offer.session) == overrides
    assert dict(parse_offer(body(CHROME_OFFER, session={})).session) == {}


def test_an_unknown_session_key_lists_exactly_what_an_offer_takes() -> None:
    with pytest.raises(OfferError) as caught:
        parse_offer(body(CHROME_OFFER, session={"sample_rate": 16000}))
    assert str(caught.value) == (
        '"session" has unknown key "sample_rate"; allowed: "conversation", '
        '"echo_cancellation", "language", "system_prompt", "tts", "voice"'
    )


def test_an_oversized_sdp_is_too_large_not_merely_bad() -> None:
    # Its own type, which the HTTP layer answers with 413 (the contract's "too large"),
    # though the body carrying it fits the HTTP limit.
    filler = "a=x-filler:" + "0" * MAX_SDP_BYTES + "\r\n"
    envelope = body(CHROME_OFFER + filler)
    assert len(envelope) <= MAX_BODY_BYTES  # it is the SDP that is too large
    with pytest.raises(OfferTooLarge, match='"sdp" is too large') as caught:
        parse_offer(envelope)
    assert caught.value.code == "too_large"
    with pytest.raises(OfferTooLarge, match="the SDP offer is too large"):
        parse_sdp_offer((CHROME_OFFER + filler).encode())
    with pytest.raises(OfferTooLarge, match="offer body is too large"):
        parse_offer(b" " * (MAX_BODY_BYTES + 1))


def test_message_quotes_the_offending_line_briefly() -> None:
    long_line = "x=" + "y" * 500
    with pytest.raises(OfferError) as caught:
        parse_offer(body(replaced(CHROME_OFFER, "a=rtcp-rsize", long_line)))
    message = str(caught.value)
    assert message.startswith("SDP line 27 is malformed: 'x=yyy")
    assert message.endswith("...'")
    assert len(message) < 100


# --- rejected ----------------------------------------------------------------------------

_SESSION_END = "a=msid-semantic: WMS 4bd5b2c0-7c8f-4b1e-9f0e-3f1c2c9f5a10\r\n"

BAD_OFFERS: list[tuple[str, bytes, str]] = [
    # the JSON envelope
    ("empty body", b"", "offer body is empty"),
    ("not JSON", b"v=0\r\no=- 1 1 IN IP4 0.0.0.0", "not valid JSON"),
    ("blank body", b" \n", "not valid JSON"),
    ("JSON array", b'[{"type": "offer"}]', "must be a JSON object, got an array"),
    ("JSON string", json.dumps(CHROME_OFFER).encode(), "must be a JSON object, got a string"),
    ("JSON null", b"null", "got null"),
    ("invalid UTF-8", b'{"type": "offer", "sdp": "v=0\xff\xfe"}', "not valid UTF-8: byte 0xff"),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + body(CHROME_OFFER), "not valid JSON"),
    ("NaN", b'{"type": "offer", "sdp": NaN}', "NaN"),
    ("Infinity", b'{"type": "offer", "sdp": "", "x": -Infinity}', "-Infinity"),
    ("huge integer", b'{"type": "offer", "sdp": ' + b"9" * 5000 + b"}", "not acceptable JSON"),
    ("deep nesting", b'{"type": "offer", "x": ' + b"[" * 60_000, "nested too deeply"),
    ("duplicate key", b'{"type": "offer", "sdp": "", "sdp": "v=0"}', 'duplicate key "sdp"'),
    ("body too large", body("v=0" + " " * MAX_BODY_BYTES), "offer body is too large"),
    ("missing type", json.dumps({"sdp": CHROME_OFFER}).encode(), 'no "type"'),
    ("type answer", body(CHROME_OFFER).replace(b'"offer"', b'"answer"'), 'got "answer"'),
    ("type not string", json.dumps({"type": 1, "sdp": ""}).encode(), "got 1"),
    ("missing sdp", b'{"type": "offer"}', 'offer has no "sdp"'),
    ("sdp not a string", body(42), '"sdp" must be a string, got 42'),
    ("sdp is an object", body({"sdp": CHROME_OFFER}), '"sdp" must be a string, got an object'),
    ("sdp null", body(None), "got null"),
    # the session overrides
    ("unknown session key", body(CHROME_OFFER, session={"speed": 2}), 'unknown key "speed"'),
    ("unknown session keys", body(CHROME_OFFER, session={"b": 1, "a": 2}), 'keys "a", "b"'),
    ("session not an object", body(CHROME_OFFER, session=["en"]), "must be a JSON object"),
    ("session null", body(CHROME_OFFER, session=None), '"session" must be a JSON object'),
    ("language not string", body(CHROME_OFFER, session={"language": 1}), "must be a string"),
    ("language junk", body(CHROME_OFFER, session={"language": "en us"}), "not a language"),
    ("language long", body(CHROME_OFFER, session={"language": "e" * 36}), "too long"),
    ("tts not bool", body(CHROME_OFFER, session={"tts": 1}), "must be true or false, got 1"),
    (
        "prompt too long",
        body(CHROME_OFFER, session={"system_prompt": "x" * 8001}),
        '"session.system_prompt" is too long',
    ),
    ("prompt NUL", body(CHROME_OFFER, session={"system_prompt": "a\x00"}), "NUL byte"),
    # the SDP as text
    ("empty sdp", body(""), '"sdp" is empty'),
    ("blank sdp", body("\r\n \r\n"), '"sdp" is empty'),
    ("garbage text", body("hello world"), "SDP line 1 is malformed: 'hello world'"),
    ("garbage line", body(CHROME_OFFER + "hello\r\n"), "SDP line 54 is malformed: 'hello'"),
    ("NUL byte", body(replaced(CHROME_OFFER, "s=-", "s=-\x00")), "SDP line 3 contains a NUL"),
    ("escape char", body(CHROME_OFFER.replace("s=-", "s=\x1b[2J")), "control character"),
    ("line separator", body(replaced(CHROME_OFFER, "s=-", "s=\u2028m=x")), "line separator"),
    ("lone surrogate", body(replaced(CHROME_OFFER, "s=-", "s=\ud800")), "lone surrogate"),
    (
        "huge sdp",
        body(CHROME_OFFER + "a=x-filler:" + "0" * MAX_SDP_BYTES + "\r\n"),
        '"sdp" is too large',
    ),
    (
        "too many lines",
        body(CHROME_OFFER + "a=x-filler:0\r\n" * MAX_SDP_LINES),
        "SDP has too many lines",
    ),
    ("empty line", body(replaced(CHROME_OFFER, "s=-\r\n", "s=-\r\n\r\n")), "line 4 is empty"),
    ("not v=0", body(replaced(CHROME_OFFER, "v=0", "v=1")), "must start with 'v=0', got 'v=1'"),
    ("no v=0", body(without(CHROME_OFFER, "v=")), "must start with 'v=0'"),
    ("second v=", body(CHROME_OFFER + "v=0\r\n"), "repeats the 'v=' line"),
    ("no o=", body(without(CHROME_OFFER, "o=")), "no 'o=' line"),
    ("no s=", body(without(CHROME_OFFER, "s=")), "no 's=' line"),
    ("no m=", body(join(lines_of(CHROME_OFFER)[:7])), "no media section (no 'm=' line"),
    # media sections (what the gateway can use: see ACCEPTED_USES and REFUSED_USES)
    (
        "audio without Opus",
        body(pcmu_only()),
        "the audio the client sends does not offer Opus (found: PCMU/8000)",
    ),
    (
        "Opus not in m-line",
        body(replaced(CHROME_OFFER, _AUDIO_M, "m=audio 49203 UDP/TLS/RTP/SAVPF 0 8")),
        "does not offer Opus (found: PCMU/8000, PCMA/8000)",
    ),
    (
        "Opus mono",
        body(replaced(CHROME_OFFER, "opus/48000/2", "opus/48000/1")),
        "does not offer Opus (found: opus/48000/1,",
    ),
    (
        "too many media sections",
        body(
            CHROME_OFFER
            + "".join(
                f"m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:{i}\r\n"
                for i in range(2, MAX_MEDIA_SECTIONS + 1)
            )
        ),
        f"too many media sections: more than {MAX_MEDIA_SECTIONS}",
    ),
    ("bad protocol", body(replaced(CHROME_OFFER, "UDP/TLS/RTP/SAVPF", "RTP/AVP")), "'RTP/AVP'"),
    (
        "bad data channel protocol",
        body(replaced(CHROME_OFFER, "UDP/DTLS/SCTP", "UDP/TLS/RTP/SAVPF")),
        "application protocol 'UDP/TLS/RTP/SAVPF'",
    ),
    ("unknown media", body(replaced(CHROME_OFFER, "m=application", "m=text")), "media 'text'"),
    ("m-line junk", body(replaced(CHROME_OFFER, _AUDIO_M, "m=audio 9")), "malformed 'm=' line"),
    (
        "payload type 300",
        body(replaced(CHROME_OFFER, _AUDIO_M, _AUDIO_M + " 300")),
        "invalid payload type 300",
    ),
    (
        "too many payload types",
        body(replaced(CHROME_OFFER, _AUDIO_M, _AUDIO_M + " 96" * 130)),
        "lists too many payload types",
    ),
    ("port too big", body(replaced(CHROME_OFFER, "49203 UDP/TLS", "70000 UDP/TLS")), "port"),
    (
        "two data channels",
        body(CHROME_OFFER + only_section(CHROME_OFFER, "application").replace("mid:1", "mid:2")),
        "more than one application (data channel) section",
    ),
    # ICE and DTLS
    ("no ice-ufrag", body(without(CHROME_OFFER, "a=ice-ufrag")), "no a=ice-ufrag"),
    ("no ice-pwd", body(without(CHROME_OFFER, "a=ice-pwd")), "no a=ice-pwd"),
    (
        "no ice-pwd for data channel",
        body(without(CHROME_OFFER, "a=ice-pwd", after="m=application")),
        "no a=ice-pwd for the application section at line",
    ),
    ("short ice-pwd", body(CHROME_OFFER.replace("x8Zd3uQ1Jt", "")), "malformed a=ice-pwd"),
    ("bad ice-ufrag", body(CHROME_OFFER.replace("Fq3n", "Fq3n!")), "malformed a=ice-ufrag"),
    ("no fingerprint", body(without(CHROME_OFFER, "a=fingerprint")), "no a=fingerprint"),
    (
        "bad fingerprint hex",
        body(CHROME_OFFER.replace(_FP_CHROME, "ZZ" + _FP_CHROME[2:])),
        "malformed a=fingerprint",
    ),
    (
        "short fingerprint",
        body(CHROME_OFFER.replace(_FP_CHROME, _FP_CHROME[:59])),
        "sha-256 fingerprint of 20 bytes; expected 32",
    ),
    (
        "md5 fingerprint",
        body(CHROME_OFFER.replace("sha-256", "md5")),
        "unsupported fingerprint hash 'md5'",
    ),
    (
        "sha-1 fingerprint only",
        body(CHROME_OFFER.replace(f"sha-256 {_FP_CHROME}", f"sha-1 {_FP_CHROME[:59]}")),
        "no sha-256, sha-384 or sha-512 fingerprint",
    ),
    ("no setup", body(without(CHROME_OFFER, "a=setup")), "no a=setup"),
    ("setup holdconn", body(CHROME_OFFER.replace("actpass", "holdconn")), "malformed a=setup"),
    # what else aiortc relies on
    ("no rtcp-mux", body(without(CHROME_OFFER, "a=rtcp-mux")), "no a=rtcp-mux"),
    ("no direction", body(without(CHROME_OFFER, "a=sendrecv")), "no direction"),
    ("no mid", body(without(CHROME_OFFER, "a=mid:0")), "no a=mid in the audio section"),
    ("duplicate mid", body(CHROME_OFFER.replace("a=mid:1", "a=mid:0")), "repeats a=mid '0'"),
    (
        "bundle unknown mid",
        body(CHROME_OFFER.replace("BUNDLE 0 1", "BUNDLE 0 1 7")),
        "bundles a=mid '7'",
    ),
    ("no sctp-port", body(without(CHROME_OFFER, "a=sctp-port")), "no a=sctp-port"),
    (
        "fmtp without rtpmap",
        body(CHROME_OFFER.replace("a=fmtp:63 111/111", "a=fmtp:64 111/111")),
        "a=fmtp for payload type 64, which has no a=rtpmap",
    ),
    (
        "fmtp not a number",
        body(CHROME_OFFER.replace("minptime=10", "minptime=ten")),
        "malformed a=fmtp",
    ),
    (
        "rtpmap twice",
        body(CHROME_OFFER.replace("a=rtpmap:0 PCMU", "a=rtpmap:111 PCMU")),
        "repeats a=rtpmap for payload type 111",
    ),
    ("rtpmap PT 200", body(CHROME_OFFER.replace("rtpmap:0 PCMU", "rtpmap:200 PCMU")), "rtpmap"),
    ("rtpmap short", body(CHROME_OFFER.replace("a=rtpmap:9 G722/8000", "a=rtpmap:9")), "rtpmap"),
    ("rtcp-fb short", body(CHROME_OFFER.replace("111 transport-cc", "111")), "a=rtcp-fb"),
    (
        "extmap with attributes",
        body(CHROME_OFFER.replace("sdes:mid", "sdes:mid extra")),
        "malformed a=extmap",
    ),
    (
        "msid trailing space",
        body(
            CHROME_OFFER.replace(
                " 9a1f6c3e-2d4b-4e8a-b7c6-5d4e3f2a1b0c\r\na=rtcp-mux", " \r\na=rtcp-mux"
            )
        ),
        "malformed a=msid",
    ),
    ("ssrc without value", body(CHROME_OFFER + "a=ssrc:1 foo\r\n"), "malformed a=ssrc"),
    ("ssrc-group junk", body(CHROME_OFFER + "a=ssrc-group:FID 1 x\r\n"), "a=ssrc-group"),
    ("candidate short", body(CHROME_OFFER + "a=candidate:1 1 udp 1\r\n"), "a=candidate"),
    (
        "candidate tab",
        body(CHROME_OFFER.replace("192.0.2.23 49203 typ", "192.0.2.23\t49203 typ")),
        "malformed a=candidate",
    ),
    ("bad c= line", body(CHROME_OFFER.replace("c=IN IP4 192.0.2.23", "c=IN IP4")), "'c=' line"),
    ("bad rtcp", body(CHROME_OFFER.replace("a=rtcp:9", "a=rtcp:x")), "malformed a=rtcp"),
    ("bad sctp-port", body(CHROME_OFFER.replace("sctp-port:5000", "sctp-port:0")), "sctp-port"),
    ("bad max-message-size", body(CHROME_OFFER + "a=max-message-size:-1\r\n"), "max-message"),
    ("group without value", body(replaced(CHROME_OFFER, _SESSION_END, "a=group\r\n")), "group"),
    ("attribute junk", body(CHROME_OFFER + "a= x\r\n"), "SDP line 54 is malformed: 'a= x'"),
]


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [pytest.param(payload, phrase, id=name) for name, payload, phrase in BAD_OFFERS],
)
def test_bad_offer_is_rejected(payload: bytes, phrase: str) -> None:
    with pytest.raises(OfferError) as caught:
        parse_offer(payload)
    message = str(caught.value)
    assert phrase in message
    assert "could not be checked" not in message
    assert len(message) < 300
    assert message.isprintable()


def test_bad_offer_ids_are_unique() -> None:
    names = Counter(name for name, _, _ in BAD_OFFERS)
    assert [name for name, count in names.items() if count > 1] == []


# --- properties: OfferError or an Offer, nothing else ------------------------------------


def check(payload: bytes) -> Offer | None:
    """parse_offer's result, or None when it raised OfferError (and only that)."""
    try:
        offer = parse_offer(payload)
    except OfferError as exc:
        message, cause = str(exc), exc.__cause__
    else:
        assert offer.sdp.endswith("\r\n")
        assert all(re.match("[a-z]=", line) for line in lines_of(offer.sdp))
        assert parse_offer(body(offer.sdp)).sdp == offer.sdp  # normalising is idempotent
        return offer
    assert message, cause
    assert "could not be checked" not in message, repr(cause)  # a bug in the validator
    return None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(payload: bytes) -> None:
    check(payload)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_arbitrary_json(value: object) -> None:
    check(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"sdp": _JSON | st.text(max_size=200)},
        optional={"type": st.sampled_from(["offer", "answer", ""]) | _JSON, "session": _JSON},
    )
)
def test_arbitrary_envelope(document: dict[str, object]) -> None:
    check(json.dumps(document).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_sdp_text(text: str) -> None:
    check(body("v=0\r\n" + text))


@dataclass(frozen=True)
class Mutation:
    op: str
    index: int
    other: int
    text: str

    def apply(self, lines: list[str]) -> None:
        if not lines:
            return
        i = self.index % len(lines)
        line = lines[i]
        if self.op == "delete":
            del lines[i]
        elif self.op == "duplicate":
            lines.insert(i, line)
        elif self.op == "truncate":
            lines[i] = line[: self.other % (len(line) + 1)]
        elif self.op == "replace":
            lines[i] = self.text
        elif self.op == "insert":
            lines.insert(i, self.text)
        elif self.op == "append":
            lines[i] = line + self.text
        elif self.op == "edit" and line:
            k = self.other % len(line)
            lines[i] = line[:k] + self.text[:1] + line[k + 1 :]
        elif self.op == "swap":
            j = self.other % len(lines)
            lines[i], lines[j] = lines[j], line


_PREFIXES = [
    "",
    "a=",
    "m=",
    "c=",
    "v=",
    "m=audio ",
    "m=audio 9 UDP/TLS/RTP/SAVPF ",
    "m=application 9 UDP/DTLS/SCTP ",
    "a=rtpmap:",
    "a=rtpmap:96 opus/",
    "a=fmtp:",
    "a=fmtp:96 minptime=",
    "a=rtcp-fb:",
    "a=candidate:",
    "a=candidate:1 1 udp 1 192.0.2.1 9 typ host ",
    "a=fingerprint:",
    "a=fingerprint:sha-256 ",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=setup:",
    "a=mid:",
    "a=extmap:",
    "a=ssrc:",
    "a=ssrc-group:",
    "a=group:BUNDLE ",
    "a=rtcp:",
    "a=sctp-port:",
    "a=sctpmap:",
    "a=max-message-size:",
    "a=inactive",
]
_LINE_TEXT = st.builds(
    str.__add__,
    st.sampled_from(_PREFIXES),
    st.text(alphabet=" :/;=.-*0123456789abcdefxyzAFopus\t\x00\u2028\xa0", max_size=24)
    | st.text(max_size=12),
)
_MUTATION = st.builds(
    Mutation,
    op=st.sampled_from(
        ["delete", "duplicate", "truncate", "replace", "insert", "append", "edit", "swap"]
    ),
    index=st.integers(0, 200),
    other=st.integers(0, 200),
    text=_LINE_TEXT,
)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(["aiortc", "chrome", "firefox"]),
    mutations=st.lists(_MUTATION, min_size=1, max_size=4),
    newline=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_mutated_offer(
    base_offers: dict[str, str], base: str, mutations: list[Mutation], newline: str
) -> None:
    lines = lines_of(base_offers[base])
    for mutation in mutations:
        mutation.apply(lines)
    check(body(newline.join(lines) + newline))


# --- what aiortc makes of the offers the validator passes ---------------------------------


def mutants(base: str, count: int, rng: random.Random) -> list[str]:
    ops = ["delete", "duplicate", "truncate", "replace", "insert", "append", "edit", "swap"]
    result = []
    for _ in range(count):
        lines = lines_of(base)
        for _ in range(rng.randint(1, 3)):
            text = rng.choice(_PREFIXES) + "".join(
                rng.choice(" :/0123456789abxyz=") for _ in range(rng.randrange(10))
            )
            Mutation(rng.choice(ops), rng.randrange(200), rng.randrange(200), text).apply(lines)
        result.append(join(lines))
    return result


async def answer(sdp: str) -> tuple[BaseException | None, BaseException | None]:
    """Feed ``sdp`` to a fresh aiortc peer; return what its negotiation and close() raised."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    failed: BaseException | None = None
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert pc.localDescription.type == "answer"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # recording what aiortc raises is the point
        failed = exc
    try:
        await pc.close()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return failed, exc
    return failed, None


async def test_aiortc_answers_what_the_validator_passes(
    base_offers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The real and browser-shaped offers must be answered end to end (not the mDNS one:
    # aioice would spend a second trying to resolve its made-up name over multicast).
    answerable = {**base_offers, **VALID_VARIANTS, **ACCEPTED_USES}
    del answerable["mDNS candidate"]
    for name, sdp in answerable.items():
        assert await answer(parse_offer(body(sdp)).sdp) == (None, None), name

    # Mutants that pass the validator: aiortc may still refuse some (the gateway wraps it in
    # try/except), but what it raises must be an ordinary, catchable Exception.
    loop = asyncio.get_running_loop()
    background: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: background.append(context))
    rng = random.Random(20240601)
    outcomes: Counter[str] = Counter()
    try:
        for base in base_offers.values():
            for sdp in mutants(base, 15, rng):
                offer = check(body(sdp))
                if offer is None:
                    outcomes["rejected by the validator"] += 1
                    continue
                failed, close_failed = await answer(offer.sdp)
                for exc in (failed, close_failed):
                    assert exc is None or isinstance(exc, Exception), repr(exc)
                outcomes["answered" if failed is None else f"aiortc: {failed!r}"[:90]] += 1
                if close_failed is not None:
                    outcomes[f"close(): {close_failed!r}"[:90]] += 1
        await asyncio.sleep(0.05)  # let aiortc's background connect tasks run
    finally:
        loop.set_exception_handler(previous)
    outcomes["background task errors"] = len(background)
    with capsys.disabled():
        print("\naiortc on validator-passing mutants:", dict(outcomes))
