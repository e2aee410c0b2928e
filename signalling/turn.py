"""Short-lived TURN credentials by coturn's ``use-auth-secret`` scheme (the "TURN REST API",
draft-uberti-behave-turn-rest-00), for clients off the VPN and for the gateway's own relay.

The gateway and the TURN server share one secret; nobody else ever sees it. For each client
the gateway derives::

    username   = "<expiry, Unix seconds>:<user id>"
    credential = base64(HMAC-SHA1(secret, username))

and coturn, given the same secret (``use-auth-secret``, ``static-auth-secret``), recomputes
the credential from the username and refuses a username whose expiry has passed. coturn
checks the expiry when an allocation is authenticated, not on its later refreshes (it keeps
the allocation's key: ``check_stun_auth`` in coturn's ``ns_turn_server.c``), so a credential
only has to outlive the moment a client connects, not the session it opens.

Pure: the secret, the user and ``now`` go in, strings come out. No I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from aiortc import RTCIceServer

# Long enough to connect and to reconnect a few times with what one GET /config gave;
# short enough that a credential copied out of a page is not a lasting pass to the relay.
DEFAULT_TTL_S = 3600
MIN_TTL_S = 60
MAX_TTL_S = 86_400  # the draft's recommended ceiling (one day)
# RFC 2104 section 3: a key shorter than the hash output (20 bytes for SHA-1) is strongly
# discouraged. It matters here: every client holds (username, HMAC) pairs to guess from.
MIN_SECRET_BYTES = 20
SEPARATOR = ":"  # coturn's --rest-api-separator default
MAX_USER_CHARS = 64
# What coturn (is_secure_string) and every TURN client accept in a username without
# quoting: no spaces, quotes, backslashes or control characters; no separator either.
_UNSAFE_USER_CHARS = re.compile(r"[^A-Za-z0-9._@+-]")
# RFC 7065 turn:/turns: URIs as aiortc parses them: a DNS name or IPv4 address (aiortc's
# parser cannot read an IPv6 literal), an optional port and an optional transport.
_TURN_URL = re.compile(
    r"(?P<scheme>turns?):(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>[a-z]+))?"
)
URL_EXAMPLE = "turn:turn.example.org:3478?transport=udp"


def parse_turn_url(text: str) -> str:
    """A ``turn:`` or ``turns:`` URL that both browsers and aiortc can use, else ValueError
    with the reason. TURN over DTLS (``turns:...?transport=udp``) is refused: browsers do
    not speak it and aiortc skips it."""
    value = text.strip()
    scheme, colon, rest = value.partition(":")
    if not colon or scheme not in ("turn", "turns"):
        raise ValueError(f"expected a turn: or turns: URL like {URL_EXAMPLE}, got {text!r}")
    if rest.startswith("//"):
        raise ValueError(f"{text!r}: a TURN URL has no // (RFC 7065), e.g. {URL_EXAMPLE}")
    if rest.startswith("["):
        raise ValueError(f"{text!r}: aiortc cannot use an IPv6 address here; use a host name")
    match = _TURN_URL.fullmatch(value)
    if match is None:
        raise ValueError(f"{text!r} is not a TURN URL like {URL_EXAMPLE}")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    transport = match["transport"]
    if transport not in (None, "udp", "tcp"):
        raise ValueError(f"{text!r}: the transport is udp or tcp")
    if scheme == "turns" and transport == "udp":
        raise ValueError(f"{text!r}: turns: runs over TLS on TCP; use ?transport=tcp")
    return value


def parse_secret(data: bytes) -> bytes:
    """The shared secret from a file's bytes (one line; surrounding whitespace dropped, as
    editors add a final newline), else ValueError with the reason (never the secret)."""
    secret = data.strip()
    if not secret:
        raise ValueError("is empty")
    if any(byte <= 0x20 or byte == 0x7F for byte in secret):
        raise ValueError(
            "must be one word with no spaces or control characters, as coturn's "
            "static-auth-secret is"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"holds {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
            "(e.g. `openssl rand -hex 32`)"
        )
    return secret


def user_id(subject: str) -> str:
    """A principal's subject as the user part of a TURN username: characters coturn or a
    client could misread become ``_``, and it is cut to :data:`MAX_USER_CHARS`."""
    cleaned = _UNSAFE_USER_CHARS.sub("_", subject)[:MAX_USER_CHARS]
    return cleaned or "_"


def turn_username(expires: int, user: str) -> str:
    return f"{expires}{SEPARATOR}{user}"


def turn_password(secret: bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): what coturn computes to check it."""
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnCredential:
    username: str
    credential: str = field(repr=False)
    expires: int  # Unix seconds

    def ice_server(self, urls: tuple[str, ...]) -> dict[str, object]:
        """As a W3C ``RTCIceServer`` dictionary, for ``new RTCPeerConnection({iceServers})``."""
        return {"urls": list(urls), "username": self.username, "credential": self.credential}


@dataclass(frozen=True)
class TurnRelay:
    """One TURN service (its URLs, the secret shared with it) and how long credentials for
    it last. The secret never leaves this object except as an HMAC."""

    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    ttl_s: int = DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("a TURN relay needs at least one URL")
        if not MIN_TTL_S <= self.ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be between {MIN_TTL_S} and {MAX_TTL_S}")

    def credential(self, subject: str, now: float) -> TurnCredential:
        """A credential for ``subject`` (see :func:`user_id`), valid until ``now`` + TTL."""
        expires = int(now) + self.ttl_s
        username = turn_username(expires, user_id(subject))
        return TurnCredential(username, turn_password(self.secret, username), expires)

    def ice_server(self, subject: str, now: float) -> dict[str, object]:
        """What a browser puts in ``iceServers``, for ``subject``."""
        return self.credential(subject, now).ice_server(self.urls)

    def rtc_ice_server(self, subject: str, now: float) -> RTCIceServer:
        """The same for an aiortc peer connection (aiortc uses the first URL it can)."""
        credential = self.credential(subject, now)
        return RTCIceServer(
            urls=list(self.urls), username=credential.username, credential=credential.credential
        )
