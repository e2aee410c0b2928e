"""Validate a ``POST /offer`` body before aiortc sees it.

aiortc answers almost anything: empty or garbage SDP gets an answer, and a mutated offer
makes its parser raise whatever the line happened to trip (``ValueError``,
``AssertionError``, ``AttributeError``, ``KeyError``, ``IndexError``, even
``StopIteration``). :func:`parse_offer` checks the JSON envelope and the SDP first and
raises :class:`~signalling.errors.OfferError` with a message that names the problem, and
nothing else, for any input.

An offer must give the gateway something to use: audio the client sends (``a=sendrecv`` or
``a=sendonly``, port not 0), which must offer Opus, or a data channel for typed text. Beyond
that and what the HTTP contract asks (ICE credentials, a DTLS fingerprint), every line that
aiortc's SDP parser reads with ``int()``, ``split()`` or a table lookup is checked here with a
stricter grammar, and every media section must carry what aiortc's ``setRemoteDescription``
and ``createAnswer`` rely on (ICE credentials, ``a=setup``, a unique ``a=mid``; ``a=rtcp-mux``
and a direction for RTP; ``a=sctp-port`` for the data channel). Pure code, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from signalling.errors import OfferError, OfferTooLarge
from signalling.jsonvalues import NonStandardConstant, json_type, reject_constant

__all__ = [
    "DIGEST_BYTES",
    "MAX_BODY_BYTES",
    "MAX_LANGUAGE_CHARS",
    "MAX_MEDIA_SECTIONS",
    "MAX_SDP_BYTES",
    "MAX_SDP_LINES",
    "MAX_SYSTEM_PROMPT_CHARS",
    "SESSION_KEYS",
    "USABLE_FINGERPRINT_HASHES",
    "Offer",
    "parse_offer",
    "parse_session",
    "unknown_keys",
]

MAX_SDP_BYTES = 64 * 1024
"""Largest SDP accepted, in UTF-8 bytes. A browser's audio + data channel offer is ~3 KiB."""

MAX_SDP_LINES = 1000
"""Most SDP lines accepted. A browser's audio + data channel offer has ~60."""

MAX_MEDIA_SECTIONS = 8
"""Most ``m=`` sections accepted."""

MAX_BODY_BYTES = MAX_SDP_BYTES + 16 * 1024
"""Largest JSON body accepted: a maximal SDP, its escaped line ends and the session
overrides. ``gateway.http.app`` gives aiohttp the same limit, which answers 413 beyond it."""

MAX_SYSTEM_PROMPT_CHARS = 8000
MAX_LANGUAGE_CHARS = 35  # the longest BCP 47 tag in practical use

# "echo_cancellation": the client's microphone already cancels echo (the browser's
# getSettings() says so); the gateway's own canceller then starts warm (media/echo.py).
# "conversation": the token from an earlier session.ready, to continue that conversation.
SESSION_KEYS = frozenset(
    {"language", "system_prompt", "tts", "voice", "echo_cancellation", "conversation"}
)
"""The keys a client may set in an offer's ``"session"``. ``session.update`` takes its own
set (``signalling.protocol.UPDATE_KEYS``): not ``echo_cancellation`` or ``conversation``,
but ``sample_rate``."""
MAX_CONVERSATION_TOKEN_CHARS = 1024  # a signed JWT of a few claims is ~250

DIGEST_BYTES: Mapping[str, int] = MappingProxyType(
    {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
)
"""Fingerprint hash functions accepted in ``a=fingerprint``, and their digest sizes."""

USABLE_FINGERPRINT_HASHES = frozenset({"sha-256", "sha-384", "sha-512"})
"""The hashes aiortc verifies a peer certificate with; each section needs one of them."""

RTP_PROTOCOLS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP"})
SCTP_PROTOCOLS = frozenset({"UDP/DTLS/SCTP", "DTLS/SCTP"})
MEDIA_KINDS = ("audio", "video", "application")
DTLS_SETUP_VALUES = frozenset({"actpass", "active", "passive"})
# Numeric fmtp parameters aiortc converts with int() (aiortc.sdp.FMTP_INT_PARAMETERS).
FMTP_INT_PARAMETERS = frozenset(
    {"apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo", "useinbandfec"}
)
# RTP payload types that clash with RTCP packet types when multiplexed (RFC 5761).
FORBIDDEN_PAYLOAD_TYPES = range(72, 77)

_QUOTE_CHARS = 60

# Characters refused anywhere in the SDP: C0 and C1 controls (CR, LF and TAB excepted),
# DEL, lone surrogates, and the Unicode line separators that str.splitlines() (which
# aiortc uses) splits on, so that aiortc sees exactly the lines checked here.
_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_LINE = re.compile(r"[vosiuepcbtrzkam]=", re.ASCII)  # the types RFC 8866 defines
_TOKEN_CHAR = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]"  # RFC 8866 token-char
_TOKEN = re.compile(f"{_TOKEN_CHAR}+", re.ASCII)
_CONNECTION = re.compile(r"IN IP[46] [^ ]+", re.ASCII)
_MEDIA = re.compile(r"m=([^ ]+) ([0-9]+) ([A-Z/]+) (.+)", re.ASCII)
_FORMATS_RTP = re.compile(r"[0-9]{1,3}( [0-9]{1,3})*", re.ASCII)
_ICE_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}", re.ASCII)
_ICE_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}", re.ASCII)
_FINGERPRINT = re.compile(r"([^ ]+) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*)", re.ASCII)
_RTPMAP = re.compile(r"([0-9]{1,3}) ([A-Za-z0-9._-]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?", re.ASCII)
_FMTP = re.compile(r"([0-9]{1,3}) (.+)", re.ASCII)
_RTCP_FB = re.compile(r"(\*|[0-9]{1,3}) [^ ].*", re.ASCII)
_EXTMAP = re.compile(r"([0-9]{1,3})(?:/[A-Za-z]+)? [^ ]+", re.ASCII)
_RTCP = re.compile(r"([0-9]{1,5})(?: IN IP[46] [^ ]+)?", re.ASCII)
_SSRC = re.compile(r"([0-9]{1,10}) [^ :]+:.*", re.ASCII)
_SSRC_GROUP = re.compile(r"[^ ]+( [0-9]{1,10})+", re.ASCII)
_SCTPMAP = re.compile(r"[0-9]{1,5} .+", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,10}", re.ASCII)
_CANDIDATE_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}", re.ASCII)
_MSID = re.compile(f"{_TOKEN_CHAR}{{1,64}}( {_TOKEN_CHAR}{{1,64}})?", re.ASCII)
_LANGUAGE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_VOICE = re.compile(r"[A-Za-z0-9_.:-]+", re.ASCII)  # a speech server's voice name
MAX_VOICE_CHARS = 64


def _no_overrides() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Offer:
    """A checked offer: the SDP with CRLF line endings, and the client's session overrides."""

    sdp: str
    session: Mapping[str, object] = field(default_factory=_no_overrides)


def parse_offer(body: bytes) -> Offer:
    """Parse and check a ``POST /offer`` body.

    Returns the offer with its SDP normalised to CRLF line endings. Raises
    :class:`OfferError`, and no other exception, for anything unacceptable.
    """
    try:
        return _parse_offer(body)
    except OfferError:
        raise
    except Exception as exc:  # a bug here must still be a 400, never a 500
        raise OfferError(f"offer could not be checked ({type(exc).__name__})") from exc


def parse_session(value: object) -> Mapping[str, object]:
    """Check the ``"session"`` overrides object; return a read-only copy."""
    if not isinstance(value, dict):
        raise OfferError(f'"session" must be a JSON object, got {json_type(value)}')
    unknown = unknown_keys(value, SESSION_KEYS, '"session"')
    if unknown:
        raise OfferError(unknown)
    checked: dict[str, object] = {}
    for key, item in value.items():
        where = f'"session.{key}"'
        if key in ("tts", "echo_cancellation"):
            if not isinstance(item, bool):
                raise OfferError(f"{where} must be true or false, got {_describe_json(item)}")
        elif not isinstance(item, str):
            raise OfferError(f"{where} must be a string, got {_describe_json(item)}")
        elif key == "language":
            if len(item) > MAX_LANGUAGE_CHARS:
                raise OfferError(
                    f"{where} is too long: {len(item)} characters, limit {MAX_LANGUAGE_CHARS}"
                )
            if not _LANGUAGE.fullmatch(item):
                raise OfferError(f"{where} is not a language code: {_quote_json(item)}")
            item = item.lower()  # Whisper's codes are lower case: "EN" means "en"
        elif key == "voice":
            if not 0 < len(item) <= MAX_VOICE_CHARS or not _VOICE.fullmatch(item):
                raise OfferError(
                    f"{where} must be a voice name of up to {MAX_VOICE_CHARS} letters, digits "
                    f"and ._:- characters, got {_quote_json(item)}"
                )
        elif key == "conversation":
            if not 0 < len(item) <= MAX_CONVERSATION_TOKEN_CHARS:
                raise OfferError(
                    f"{where} must be the token from session.ready (at most "
                    f"{MAX_CONVERSATION_TOKEN_CHARS} characters)"
                )
        else:  # system_prompt
            if len(item) > MAX_SYSTEM_PROMPT_CHARS:
                raise OfferError(
                    f"{where} is too long: {len(item)} characters, limit {MAX_SYSTEM_PROMPT_CHARS}"
                )
            bad = _BAD_CHAR.search(item)
            if bad:
                raise OfferError(f"{where} contains {_describe_char(bad.group())}")
        checked[key] = item
    return MappingProxyType(checked)


def unknown_keys(keys: Iterable[str], allowed: Collection[str], where: str) -> str | None:
    """What is wrong with ``keys`` that are not ``allowed`` in ``where``, listing those that
    are; None when every key is allowed."""
    unknown = sorted(key for key in keys if key not in allowed)
    if not unknown:
        return None
    names = ", ".join(_quote_json(key) for key in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    listed = ", ".join(_quote_json(key) for key in sorted(allowed))
    plural = "s" if len(unknown) > 1 else ""
    return f"{where} has unknown key{plural} {names}{more}; allowed: {listed}"


# --- the JSON envelope -------------------------------------------------------------------


def parse_sdp_offer(body: bytes) -> Offer:
    """Check a bare SDP offer (WHIP's ``application/sdp`` body) exactly as the ``sdp`` of a
    JSON offer is checked, with errors that name the SDP offer. Raises :class:`OfferError`,
    and no other exception."""
    try:
        return Offer(sdp=_check_sdp(_decode(body, MAX_SDP_BYTES, "the SDP offer")))
    except OfferError as exc:  # OfferTooLarge stays itself: WHIP answers it with 413
        raise type(exc)(str(exc).replace('"sdp"', "the SDP offer")) from None
    except Exception as exc:  # a bug here must still be a 400, never a 500
        raise OfferError(f"the SDP offer could not be checked ({type(exc).__name__})") from exc


def _decode(body: bytes, limit: int, what: str) -> str:
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    elif not isinstance(body, bytes):
        raise OfferError(f"{what} must be bytes, got {type(body).__name__}")
    if not body:
        raise OfferError(f"{what} is empty")
    if len(body) > limit:
        raise OfferTooLarge(f"{what} is too large: {len(body)} bytes, limit {limit}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfferError(
            f"{what} is not valid UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start}"
        ) from exc


def _parse_offer(body: bytes) -> Offer:
    text = _decode(body, MAX_BODY_BYTES, "offer body")
    try:
        document = json.loads(text, parse_constant=reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise OfferError(
            f"offer body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except NonStandardConstant as exc:
        raise OfferError(f"offer JSON contains {exc.name}, which is not valid JSON") from exc
    except RecursionError as exc:
        raise OfferError("offer JSON is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer with more digits than int() allows
        raise OfferError(f"offer body is not acceptable JSON: {_quote(str(exc))}") from exc
    if not isinstance(document, dict):
        raise OfferError(f"offer must be a JSON object, got {json_type(document)}")

    if "type" not in document:
        raise OfferError('offer has no "type" (it must be "offer")')
    kind = document["type"]
    if kind != "offer":
        raise OfferError(f'"type" must be "offer", got {_describe_json(kind)}')

    if "sdp" not in document:
        raise OfferError('offer has no "sdp"')
    sdp = document["sdp"]
    if not isinstance(sdp, str):
        raise OfferError(f'"sdp" must be a string, got {_describe_json(sdp)}')

    session = parse_session(document["session"]) if "session" in document else None
    normalised = _check_sdp(sdp)
    if session is None:
        return Offer(sdp=normalised)
    return Offer(sdp=normalised, session=session)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise OfferError(f"offer JSON has a duplicate key {_quote_json(key)}")
        result[key] = value
    return result


# --- the SDP -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    number: int  # 1-based, as a person counts lines in the SDP
    text: str


@dataclass
class _Section:
    """One ``m=`` section, as aiortc groups lines: the m-line and every line after it."""

    number: int  # line number of the m-line
    kind: str
    port: int
    protocol: str
    formats: list[str]
    lines: list[_Line]

    def label(self) -> str:
        return f"{self.kind} section at line {self.number}"

    @cached_property
    def _attributes(self) -> Mapping[str, list[tuple[_Line, str | None]]]:
        return _index_attributes(self.lines)

    def attributes(self, name: str) -> list[tuple[_Line, str | None]]:
        return self._attributes.get(name, [])


def _check_sdp(sdp: str) -> str:
    if not sdp.strip():
        raise OfferError('"sdp" is empty')
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > MAX_SDP_BYTES:
        raise OfferTooLarge(f'"sdp" is too large: {size} bytes, limit {MAX_SDP_BYTES}')
    texts = _NEWLINE.split(sdp)
    while texts and texts[-1] == "":
        texts.pop()
    if len(texts) > MAX_SDP_LINES:
        raise OfferError(f"SDP has too many lines: {len(texts)}, limit {MAX_SDP_LINES}")
    lines = [_Line(number, text) for number, text in enumerate(texts, start=1)]

    for line in lines:
        bad = _BAD_CHAR.search(line.text)
        if bad:
            raise OfferError(f"SDP line {line.number} contains {_describe_char(bad.group())}")
        if not line.text:
            raise OfferError(f"SDP line {line.number} is empty")
        if not _LINE.match(line.text):
            raise OfferError(f"SDP line {line.number} is malformed: {_quote(line.text)}")
    if lines[0].text != "v=0":
        raise OfferError(f"SDP must start with 'v=0', got {_quote(lines[0].text)}")
    for line in lines[1:]:
        if line.text.startswith("v="):
            raise OfferError(f"SDP line {line.number} repeats the 'v=' line")

    session_lines, sections = _group(lines)
    for prefix in ("o=", "s="):
        if not any(line.text.startswith(prefix) for line in session_lines):
            raise OfferError(f"SDP has no '{prefix}' line before its first 'm=' line")

    _check_lines(session_lines, None)
    for section in sections:
        _check_lines(section.lines, section)
        _check_payload_types(section)
    _check_transport(session_lines, sections)
    _check_media(sections)
    return "\r\n".join(line.text for line in lines) + "\r\n"


def _group(lines: list[_Line]) -> tuple[list[_Line], list[_Section]]:
    session: list[_Line] = []
    sections: list[_Section] = []
    for line in lines:
        if line.text.startswith("m="):
            if len(sections) == MAX_MEDIA_SECTIONS:
                raise OfferError(
                    f"SDP has too many media sections: more than {MAX_MEDIA_SECTIONS}"
                    f" (line {line.number})"
                )
            sections.append(_parse_media_line(line))
        elif sections:
            sections[-1].lines.append(line)
        else:
            session.append(line)
    if not sections:
        raise OfferError("offer has no media section (no 'm=' line at all)")
    applications = [s for s in sections if s.kind == "application"]
    if len(applications) > 1:
        raise OfferError(
            f"offer has more than one application (data channel) section:"
            f" lines {', '.join(str(s.number) for s in applications)}"
        )
    return session, sections


def _parse_media_line(line: _Line) -> _Section:
    match = _MEDIA.fullmatch(line.text)
    if not match:
        raise OfferError(f"SDP line {line.number} is a malformed 'm=' line: {_quote(line.text)}")
    kind, port_text, protocol, format_text = match.groups()
    where = f"SDP line {line.number}"
    if kind not in MEDIA_KINDS:
        raise OfferError(
            f"{where} has unsupported media {_quote(kind)} (audio, video or application)"
        )
    if len(port_text) > 5 or int(port_text) > 65535:
        raise OfferError(f"{where} has an invalid port {_quote(port_text)}")
    expected = SCTP_PROTOCOLS if kind == "application" else RTP_PROTOCOLS
    if protocol not in expected:
        raise OfferError(
            f"{where} has {kind} protocol {_quote(protocol)}; expected "
            + " or ".join(sorted(expected))
        )
    if kind == "application":
        if protocol == "UDP/DTLS/SCTP" and format_text != "webrtc-datachannel":
            raise OfferError(
                f"{where} has format {_quote(format_text)}; expected 'webrtc-datachannel'"
            )
        if protocol == "DTLS/SCTP" and not _valid_port(format_text.split(" ")[0]):
            raise OfferError(f"{where} has an invalid SCTP port {_quote(format_text)}")
    else:
        if format_text.count(" ") >= 128:
            raise OfferError(f"{where} lists too many payload types")
        if not _FORMATS_RTP.fullmatch(format_text):
            raise OfferError(f"{where} has malformed payload types {_quote(format_text)}")
        for pt in format_text.split(" "):
            if int(pt) > 127 or int(pt) in FORBIDDEN_PAYLOAD_TYPES:
                raise OfferError(f"{where} has an invalid payload type {pt}")
    return _Section(
        number=line.number,
        kind=kind,
        port=int(port_text),
        protocol=protocol,
        formats=format_text.split(" "),
        lines=[],
    )


def _check_lines(lines: list[_Line], section: _Section | None) -> None:
    """Check the syntax of each line aiortc parses, at session level or in one section."""
    for line in lines:
        text = line.text
        if text.startswith("c="):
            if not _CONNECTION.fullmatch(text[2:]):
                raise OfferError(f"SDP line {line.number} is a malformed 'c=' line: {_quote(text)}")
        elif text.startswith("a="):
            name, value = _split_attribute(text)
            if not _TOKEN.fullmatch(name):
                raise OfferError(f"SDP line {line.number} is malformed: {_quote(text)}")
            if not _attribute_ok(name, value, section) or (
                name in _WHITESPACE_SPLIT
                and value is not None
                and value.split() != value.split(" ")
            ):
                raise OfferError(f"SDP line {line.number} has a malformed a={name}: {_quote(text)}")
            if name == "fingerprint" and value is not None:
                _check_fingerprint(line, value)


def _attribute_ok(name: str, value: str | None, section: _Section | None) -> bool:
    """Whether one attribute's value is well formed (those aiortc does not read pass)."""
    if name == "fingerprint":
        return value is not None and _FINGERPRINT.fullmatch(value) is not None
    if name == "ice-ufrag":
        return value is not None and _ICE_UFRAG.fullmatch(value) is not None
    if name == "ice-pwd":
        return value is not None and _ICE_PWD.fullmatch(value) is not None
    if name == "setup":
        return value in DTLS_SETUP_VALUES
    if section is None:
        if name in ("group", "msid-semantic"):
            return value is not None
        return True
    if name == "mid":
        return value is not None and _TOKEN.fullmatch(value) is not None and len(value) <= 64
    if value is None:
        return name not in _VALUED_MEDIA_ATTRIBUTES
    if name == "candidate":
        return _candidate_ok(value)
    if name == "msid":  # RFC 8830; aiortc takes the second word as the track id
        return _MSID.fullmatch(value) is not None
    if name == "extmap":
        match = _EXTMAP.fullmatch(value)
        return match is not None and 1 <= int(match.group(1)) <= 255
    if name == "rtpmap":
        match = _RTPMAP.fullmatch(value)
        return match is not None and int(match.group(1)) <= 127
    if name == "fmtp":
        return _FMTP.fullmatch(value) is not None and _fmtp_parameters_ok(value)
    if name == "rtcp-fb":
        return _RTCP_FB.fullmatch(value) is not None
    if name == "rtcp":
        match = _RTCP.fullmatch(value)
        return match is not None and int(match.group(1)) <= 65535
    if name == "ssrc":
        match = _SSRC.fullmatch(value)
        return match is not None and int(match.group(1)) < 2**32
    if name == "ssrc-group":
        match = _SSRC_GROUP.fullmatch(value)
        return match is not None and all(int(x) < 2**32 for x in value.split(" ")[1:])
    if name == "sctpmap":
        return _SCTPMAP.fullmatch(value) is not None
    if name == "sctp-port":
        return _valid_port(value) and int(value) > 0
    if name == "max-message-size":
        return _DIGITS.fullmatch(value) is not None
    return True


# Attributes aiortc splits on any whitespace: their fields must be separated by single spaces
# and hold no other whitespace, so that aiortc reads the same fields as checked here.
_WHITESPACE_SPLIT = frozenset({"candidate", "extmap", "fingerprint", "ssrc-group"})

# Media-level attributes that aiortc reads with a value; without one it crashes.
_VALUED_MEDIA_ATTRIBUTES = frozenset(
    {
        "candidate",
        "extmap",
        "rtpmap",
        "fmtp",
        "rtcp-fb",
        "rtcp",
        "ssrc",
        "ssrc-group",
        "sctpmap",
        "sctp-port",
        "max-message-size",
        "msid",
    }
)


def _candidate_ok(value: str) -> bool:
    """RFC 8839 candidate-attribute, as far as aiortc reads it."""
    bits = value.split(" ")
    if len(bits) < 8 or "" in bits:
        return False
    foundation, component, transport, priority, address, port, typ, _kind = bits[:8]
    if not (
        _CANDIDATE_FOUNDATION.fullmatch(foundation)
        and _DIGITS.fullmatch(component)
        and 1 <= int(component) <= 256
        and _TOKEN.fullmatch(transport)
        and _DIGITS.fullmatch(priority)
        and int(priority) < 2**32
        and _valid_port(port)
        and typ == "typ"
        and _TOKEN.fullmatch(_kind)
        and address
    ):
        return False
    # aiortc reads the extensions pairwise from the 9th token and int()s "rport".
    for i in range(8, len(bits) - 1, 2):
        if bits[i] == "rport" and not _valid_port(bits[i + 1]):
            return False
    return True


def _fmtp_parameters_ok(value: str) -> bool:
    """aiortc converts some fmtp parameters with int(); they must be integers."""
    for parameter in value.split(" ", 1)[1].split(";"):
        key, sep, number = parameter.partition("=")
        if sep and key in FMTP_INT_PARAMETERS and not _DIGITS.fullmatch(number):
            return False
    return True


def _check_fingerprint(line: _Line, value: str) -> None:
    algorithm, digest = value.split(" ")
    size = DIGEST_BYTES.get(algorithm.lower())
    if size is None:
        raise OfferError(
            f"SDP line {line.number} has an unsupported fingerprint hash {_quote(algorithm)}"
            f" (expected one of {', '.join(DIGEST_BYTES)})"
        )
    found = (len(digest) + 1) // 3
    if found != size:
        raise OfferError(
            f"SDP line {line.number} has a {algorithm} fingerprint of {found} bytes;"
            f" expected {size}"
        )


def _check_payload_types(section: _Section) -> None:
    """One codec per payload type; aiortc looks up each a=fmtp's codec among the a=rtpmaps."""
    mapped: set[int] = set()
    for line, value in section.attributes("rtpmap"):
        pt = int((value or "").split(" ", 1)[0])
        if pt in mapped:
            raise OfferError(f"SDP line {line.number} repeats a=rtpmap for payload type {pt}")
        mapped.add(pt)
    for line, value in section.attributes("fmtp"):
        fmtp_pt = int((value or "").split(" ", 1)[0])
        if fmtp_pt not in mapped:
            raise OfferError(
                f"SDP line {line.number} has a=fmtp for payload type {fmtp_pt},"
                f" which has no a=rtpmap in the {section.label()}"
            )


def _check_media(sections: list[_Section]) -> None:
    """The gateway listens to audio the client sends and talks over a data channel; an offer
    with neither would hold a session slot that nothing can use."""
    audio = [section for section in sections if section.kind == "audio"]
    sent = [s for s in audio if not _rejected(s) and _direction(s) in ("sendrecv", "sendonly")]
    if sent:
        if not any(_offers_opus(section) for section in sent):
            codecs: list[str] = []
            for section in sent:
                for _, name, rate, channels in _codecs(section):
                    codec = f"{name}/{rate}" + (f"/{channels}" if channels else "")
                    if codec not in codecs:
                        codecs.append(codec)
            found = ", ".join(codecs[:6]) if codecs else "no a=rtpmap"
            raise OfferError(f"the audio the client sends does not offer Opus (found: {found})")
        return
    channel = next((s for s in sections if s.kind == "application"), None)
    if channel is not None and not _rejected(channel):
        return  # a text session; audio the client only receives waits for spoken replies
    talk = "no data channel" if channel is None else f"the {channel.label()} is rejected (port 0)"
    if audio:
        # Every RTP section has a direction by now (_check_transport): not sent means this.
        why = {
            "recvonly": "recvonly (the client only listens)",
            "inactive": "inactive (a=inactive)",
        }.get(_direction(audio[0]) or "", "rejected (port 0)")
        heard = f"the {audio[0].label()} is {why}"
        talk = f"there is {talk}" if channel is None else talk
    else:
        heard = f"there is no audio section (it has: {', '.join(s.kind for s in sections)})"
    raise OfferError(
        f"offer gives the gateway nothing to use: {heard} and {talk}; it needs audio the"
        " client sends (a=sendrecv or a=sendonly, port not 0) or a data channel for typed text"
    )


def _rejected(section: _Section) -> bool:
    """Port 0 refuses a section, unless ``a=bundle-only`` marks it as riding on the bundle's
    transport (what browsers offer with bundlePolicy "max-bundle")."""
    return section.port == 0 and not section.attributes("bundle-only")


def _direction(section: _Section) -> str | None:
    """The section's direction: its last direction attribute, as aiortc reads it."""
    direction = None
    for line in section.lines:
        if line.text in ("a=inactive", "a=sendonly", "a=recvonly", "a=sendrecv"):
            direction = line.text[2:]
    return direction


def _codecs(section: _Section) -> list[tuple[str, str, str, str | None]]:
    """``(payload type, name, rate, channels)`` of each codec the m-line lists."""
    formats = {int(pt) for pt in section.formats}
    found = []
    for _, value in section.attributes("rtpmap"):
        match = _RTPMAP.fullmatch(value or "")
        if match is not None and int(match.group(1)) in formats:
            found.append((match.group(1), match.group(2), match.group(3), match.group(4)))
    return found


def _offers_opus(section: _Section) -> bool:
    return any(
        name.lower() == "opus" and rate == "48000" and channels == "2"
        for _, name, rate, channels in _codecs(section)
    )


def _check_transport(session_lines: list[_Line], sections: list[_Section]) -> None:
    """What aiortc's setRemoteDescription needs of every section, wherever it is set."""
    session_level = {
        name: bool(_attributes(session_lines, name)) for name in ("ice-ufrag", "ice-pwd", "setup")
    }
    session_hashes = _hashes(session_lines)
    mids: dict[str, int] = {}
    for section in sections:
        for name in ("ice-ufrag", "ice-pwd", "setup"):
            if not session_level[name] and not section.attributes(name):
                raise OfferError(
                    f"offer has no a={name} for the {section.label()} (neither in that"
                    " section nor at session level)"
                )
        hashes = session_hashes | _hashes(section.lines)
        if not hashes:
            raise OfferError(
                f"offer has no a=fingerprint (DTLS) for the {section.label()} (neither in"
                " that section nor at session level)"
            )
        if not hashes & USABLE_FINGERPRINT_HASHES:
            raise OfferError(
                f"offer has no sha-256, sha-384 or sha-512 fingerprint for the"
                f" {section.label()} (found: {', '.join(sorted(hashes))})"
            )
        if section.kind == "application":
            if section.protocol == "UDP/DTLS/SCTP" and not section.attributes("sctp-port"):
                raise OfferError(f"offer has no a=sctp-port in the {section.label()}")
        else:
            if not section.attributes("rtcp-mux"):
                raise OfferError(
                    f"offer has no a=rtcp-mux in the {section.label()} (RTCP multiplexing"
                    " is required)"
                )
            if _direction(section) is None:
                raise OfferError(
                    f"offer has no direction (a=sendrecv, a=sendonly, a=recvonly or"
                    f" a=inactive) in the {section.label()}"
                )
        found = section.attributes("mid")
        if not found:
            raise OfferError(f"offer has no a=mid in the {section.label()}")
        line, mid = found[-1]
        assert mid is not None  # checked by _attribute_ok
        if mid in mids:
            raise OfferError(
                f"SDP line {line.number} repeats a=mid {_quote(mid)}"
                f" (already used by the section at line {mids[mid]})"
            )
        mids[mid] = section.number
    for line, value in _attributes(session_lines, "group"):
        bits = (value or "").split()
        if bits and bits[0] == "BUNDLE":
            for mid in bits[1:]:
                if mid not in mids:
                    raise OfferError(
                        f"SDP line {line.number} bundles a=mid {_quote(mid)},"
                        " which no media section has"
                    )


def _hashes(lines: Sequence[_Line]) -> set[str]:
    return {(value or "").split(" ")[0].lower() for _, value in _attributes(lines, "fingerprint")}


# --- helpers -----------------------------------------------------------------------------


def _split_attribute(text: str) -> tuple[str, str | None]:
    """Split ``a=name:value`` exactly as aiortc does (``value`` is None without a colon)."""
    if ":" in text:
        name, value = text[2:].split(":", 1)
        return name, value
    return text[2:], None


def _index_attributes(lines: Sequence[_Line]) -> dict[str, list[tuple[_Line, str | None]]]:
    """Each attribute name's lines and values, in order."""
    index: dict[str, list[tuple[_Line, str | None]]] = {}
    for line in lines:
        if line.text.startswith("a="):
            name, value = _split_attribute(line.text)
            index.setdefault(name, []).append((line, value))
    return index


def _attributes(lines: Sequence[_Line], name: str) -> list[tuple[_Line, str | None]]:
    return _index_attributes(lines).get(name, [])


def _valid_port(text: str) -> bool:
    return len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


def _quote(text: str) -> str:
    """``text`` as a short Python literal, for an error message."""
    if len(text) > _QUOTE_CHARS:
        return repr(text[: _QUOTE_CHARS - 3] + "...")
    return repr(text)


def _quote_json(text: str) -> str:
    """``text`` as a short JSON string, for an error message."""
    if len(text) > _QUOTE_CHARS:
        text = text[: _QUOTE_CHARS - 3] + "..."
    return json.dumps(text)


def _describe_json(value: object) -> str:
    """A JSON value, briefly: strings quoted, containers by type, scalars as written."""
    if isinstance(value, str):
        return _quote_json(value)
    if value is None or isinstance(value, bool | int | float):
        return _quote_json_scalar(value)
    return json_type(value)


def _quote_json_scalar(value: object) -> str:
    try:
        text = json.dumps(value)
    except ValueError:  # an int too long to print
        return "a number"
    return text if len(text) <= _QUOTE_CHARS else "a number"


def _describe_char(char: str) -> str:
    names = {"\x00": "a NUL byte", "\u2028": "a line separator", "\u2029": "a paragraph separator"}
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"a lone surrogate (U+{ord(char):04X})"
    return f"{names.get(char, 'a control character')} (U+{ord(char):04X})"
