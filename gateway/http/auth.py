"""Authentication: API keys or JWTs on the guarded routes, single-use tickets for ``/ws``.

``--auth api-key`` checks a bearer token against the keys in ``--api-keys-file``;
``--auth jwt`` verifies a JWT with PyJWT: HS256 with ``--jwt-secret-file``, or RS256/ES256
with ``--jwt-public-key``. The algorithm comes from that configuration, never from the token,
so ``alg: none`` and key confusion (HS256 signed with the public key) are refused.
``--auth none`` installs nothing.

Where a client puts its credentials:

- any guarded route: ``Authorization: Bearer <token>``;
- ``GET /ws`` only, because browsers cannot set headers on a WebSocket, either
  ``?ticket=<ticket>`` from ``POST /ws-ticket`` (single use, 30 s), or the token as a
  subprotocol offered along with the application's own::

      new WebSocket(url, ["events.v1", "bearer." + token])

  The server selects ``events.v1``: a browser fails a connection whose offered subprotocols
  get no answer, and it must never be the token that is echoed back.
- ``GET /sessions/<id>/events`` only (Server-Sent Events: an EventSource cannot set
  headers), instead of credentials, the session's own capability ``?token=`` from its
  answer (:data:`CAPABILITY_ROUTES`; checked by ``gateway.http.sessions.find_session``).

Every route is guarded except :data:`OPEN_PATHS` and CORS preflight (``OPTIONS``), so a route
added later is closed until someone opens it. An open path among ``checked_paths`` (``/config``
when it hands out TURN credentials) still checks credentials that a request carries, as a
guarded route would: it answers more to an authenticated client. The check runs in a
middleware before the handler: a refused request makes no peer connection and no socket.
Tokens never reach the logs: refusals say what was wrong, not what was sent, and
:class:`GatewayAccessLogger` replaces aiohttp's access log, which records query strings.

Per client address (:func:`signalling.limits.client_key`): past :data:`AUTH_FAILURE_BURST`
failed attempts (bad credentials; none at all is not a guess), every attempt is answered 429
unread until the address's budget refills; and an address holds at most
:data:`MAX_TICKETS_PER_CLIENT` outstanding tickets, so that no client can push other clients'
tickets out of the bounded book.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import jwt
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import AuthError, ConfigError
from gateway.http.forwarded import client_address
from gateway.http.middleware import Handler, rate_limited
from gateway.ops.config import Config
from gateway.ops.logs import loggable
from signalling.limits import RateLimiter, client_key

logger = logging.getLogger(__name__)

WS_PATH = "/ws"
TICKET_PATH = "/ws-ticket"
WS_SUBPROTOCOL = "events.v1"
BEARER_SUBPROTOCOL = "bearer."  # prefix; the token follows
OPEN_PATHS = frozenset(
    {
        "/",
        "/app.js",
        "/app.css",
        "/gateway-client.js",
        "/favicon.ico",
        "/health",
        "/ready",
        "/config",
        "/openapi.json",  # describes the routes; holds nothing secret
    }
)

TICKET_TTL_S = 30.0
MAX_TICKETS = 1024
# A page needs one ticket per /ws connection and redeems it at once; a few tabs, a retry.
MAX_TICKETS_PER_CLIENT = 16
# Failed authentications per client address: a burst (a mistyped key, a stale token in a
# few tabs), then one every 6 s. Keys and secrets are far too long to guess at that rate.
AUTH_FAILURE_BURST = 10
AUTH_FAILURES_PER_MINUTE = 10
# Ticket requests per client address: a page asks once per /ws connection.
TICKET_BURST = 20  # above MAX_TICKETS_PER_CLIENT: the cap speaks first for a burst
TICKETS_PER_MINUTE = 30
JWT_LEEWAY_S = 30  # clock skew between the token issuer and this machine
MIN_API_KEY_CHARS = 16
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 section 3.2: at least the hash size
MIN_RSA_BITS = 2048
# RFC 6750 b64token: what fits in an Authorization header without quoting.
_API_KEY_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

AuthMethod = Literal["api-key", "jwt"]
JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
VerifyingKey = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Principal:
    """Who made an authenticated request: safe to log (never the credential itself)."""

    subject: str
    method: AuthMethod


PRINCIPAL = web.RequestKey("principal", Principal)


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal:
        """The principal the token stands for; :class:`AuthError` if it stands for none."""
        ...


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "replace")).digest()


class ApiKeyAuthenticator:
    def __init__(self, keys: Iterable[str]) -> None:
        # Digests are compared, not keys: equal lengths, so the comparison leaks no length.
        self._keys: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for number, key in enumerate(keys, 1):
            digest = _digest(key)
            if digest not in seen:
                seen.add(digest)
                self._keys.append((digest, f"key{number}"))
        if not self._keys:
            raise ValueError("no API keys")

    def authenticate(self, token: str) -> Principal:
        presented = _digest(token)
        subject = None
        for digest, name in self._keys:  # every key, no early exit
            if hmac.compare_digest(presented, digest):
                subject = name
        if subject is None:
            raise AuthError("unknown API key")
        return Principal(subject, "api-key")


class JwtAuthenticator:
    def __init__(
        self,
        key: VerifyingKey,
        algorithm: JwtAlgorithm,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = JWT_LEEWAY_S,
    ) -> None:
        self.algorithm = algorithm
        self._key = key
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s

    def authenticate(self, token: str) -> Principal:
        # PyJWT reads the wall clock itself; there is no way to pass `now` in.
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(self._problem(exc)) from exc
        subject = claims.get("sub")
        return Principal(subject if isinstance(subject, str) else "unknown", "jwt")

    def _problem(self, exc: jwt.PyJWTError) -> str:
        # Fixed texts: some PyJWT messages quote pieces of the decoded token.
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "token expired"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "token not valid yet (nbf or iat in the future)"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"token has no {exc.claim!r} claim"
        if isinstance(exc, jwt.InvalidAudienceError):
            return "token audience not accepted"
        if isinstance(exc, jwt.InvalidIssuerError):
            return "token issuer not accepted"
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return f"token algorithm not accepted (this gateway takes {self.algorithm} only)"
        if isinstance(exc, jwt.InvalidSignatureError):
            return "token signature does not verify"
        if isinstance(exc, jwt.DecodeError):
            return "malformed token"
        return "invalid token"


# --- start-up: read the key files once, naming the flag when something is wrong ---


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        raise ConfigError(flag, f"{path} is empty")
    return data


def load_api_keys(path: Path, flag: str = "--api-keys-file") -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    try:
        text = _read(path, flag).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(flag, f"{path} is not UTF-8 text") from exc
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        # The messages name the line, never the key.
        if len(key) < MIN_API_KEY_CHARS:
            raise ConfigError(
                flag, f"{path} line {number}: a key needs at least {MIN_API_KEY_CHARS} characters"
            )
        if not _API_KEY_SYNTAX.fullmatch(key):
            raise ConfigError(
                flag,
                f"{path} line {number}: a key may hold only letters, digits and -._~+/ "
                "(with = at the end); try `openssl rand -hex 32`",
            )
        keys.append(key)
    if not keys:
        raise ConfigError(flag, f"{path} has no keys, only comments")
    return keys


def load_hs256_secret(path: Path) -> bytes:
    """The file's bytes less surrounding whitespace (editors add a final newline)."""
    secret = _read(path, "--jwt-secret-file").strip()
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            "--jwt-secret-file",
            f"{path} holds {len(secret)} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
        )
    return secret


def load_public_key(path: Path) -> tuple[VerifyingKey, JwtAlgorithm]:
    """The key and the one algorithm it verifies: RS256 for RSA, ES256 for P-256."""
    flag = "--jwt-public-key"
    try:
        key = serialization.load_pem_public_key(_read(path, flag))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            flag, f"{path} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                flag, f"{path} is a {key.key_size}-bit RSA key; RS256 needs {MIN_RSA_BITS} or more"
            )
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(flag, f"{path} is on curve {key.curve.name}; ES256 needs P-256")
        return key, "ES256"
    raise ConfigError(flag, f"{path} is a {type(key).__name__}; use an RSA or P-256 key")


def build_authenticator(config: Config) -> Authenticator | None:
    """What ``--auth`` asks for, with its key files read now; ``None`` for ``--auth none``."""
    if config.auth == "none":
        return None
    if config.auth == "api-key":
        if config.api_keys_file is None:
            raise ConfigError("--api-keys-file", "required with --auth api-key")
        return ApiKeyAuthenticator(load_api_keys(config.api_keys_file))
    if (config.jwt_secret_file is None) == (config.jwt_public_key is None):
        raise ConfigError(
            "--jwt-secret-file",
            "--auth jwt needs exactly one of --jwt-secret-file or --jwt-public-key",
        )
    key: VerifyingKey
    algorithm: JwtAlgorithm
    if config.jwt_secret_file is not None:
        key, algorithm = load_hs256_secret(config.jwt_secret_file), "HS256"
    else:
        assert config.jwt_public_key is not None
        key, algorithm = load_public_key(config.jwt_public_key)
    return JwtAuthenticator(key, algorithm, audience=config.jwt_audience, issuer=config.jwt_issuer)


# --- tickets: what a browser can carry to /ws in the URL ---


@dataclass(frozen=True)
class _Ticket:
    principal: Principal
    client: str  # the address it was issued to, for the per-client cap
    expires: float


class TicketBook:
    """Short-lived single-use tickets for ``/ws``, each standing for the principal that asked.

    Bounded twice: each client (address) holds at most ``per_client`` outstanding tickets, and
    the book at most ``limit``, past which the oldest of all is dropped (and counted). Callers
    ask :meth:`retry_after` first and refuse a client at its cap, so that no one client can
    push the others' tickets out. Pure: the caller passes ``now`` (monotonic).
    """

    def __init__(
        self,
        ttl_s: float = TICKET_TTL_S,
        limit: int = MAX_TICKETS,
        per_client: int = MAX_TICKETS_PER_CLIENT,
    ) -> None:
        if limit < 1 or per_client < 1:
            raise ValueError(f"need limit >= 1 and per_client >= 1; got {limit}, {per_client}")
        self.ttl_s = ttl_s
        self.per_client = per_client
        self.dropped = 0
        self._limit = limit
        # Keyed by digest, so a lookup's timing says nothing about stored tickets.
        # Insertion order is issue order, and every ticket lives ttl_s: oldest first.
        self._tickets: dict[bytes, _Ticket] = {}
        # Each client's outstanding tickets, oldest first; a client holding none is absent.
        self._by_client: dict[str, dict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def retry_after(self, client: str, now: float) -> float | None:
        """None if ``client`` may have another ticket now; else the seconds until its oldest
        outstanding ticket expires."""
        self._sweep(now)
        held = self._by_client.get(client, {})
        if len(held) < self.per_client:
            return None
        return self._tickets[next(iter(held))].expires - now

    def issue(self, principal: Principal, now: float, *, client: str) -> str:
        """A new ticket. A client already at its cap loses its own oldest ticket (never
        another client's): callers that asked :meth:`retry_after` first never see that."""
        self._sweep(now)
        held = self._by_client.get(client, {})
        while len(held) >= self.per_client:
            self._remove(next(iter(held)))
        while len(self._tickets) >= self._limit:
            self._remove(next(iter(self._tickets)))
            self.dropped += 1
        ticket = secrets.token_urlsafe(32)
        digest = _digest(ticket)
        self._tickets[digest] = _Ticket(principal, client, now + self.ttl_s)
        self._by_client.setdefault(client, {})[digest] = None
        return ticket

    def redeem(self, ticket: str, now: float) -> Principal:
        digest = _digest(ticket)
        if digest not in self._tickets:
            raise AuthError("unknown or already used ticket")
        entry = self._remove(digest)
        if now >= entry.expires:
            raise AuthError("ticket expired")
        return entry.principal

    def _remove(self, digest: bytes) -> _Ticket:
        entry = self._tickets.pop(digest)
        held = self._by_client[entry.client]
        del held[digest]
        if not held:
            del self._by_client[entry.client]
        return entry

    def _sweep(self, now: float) -> None:
        while self._tickets:
            oldest = next(iter(self._tickets))
            if self._tickets[oldest].expires > now:
                break
            self._remove(oldest)


TICKETS = web.AppKey("tickets", TicketBook)
# Failed authentications per client address (client_key): spent on failures, looked at first.
AUTH_FAILURES = web.AppKey("auth_failures", RateLimiter)


# --- the aiohttp side ---


def _bearer(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    return token


def _subprotocol_token(offered: list[str]) -> str | None:
    tokens = [p[len(BEARER_SUBPROTOCOL) :] for p in offered if p.startswith(BEARER_SUBPROTOCOL)]
    if not tokens:
        return None
    if len(tokens) > 1 or not tokens[0]:
        raise AuthError(f"offer exactly one {BEARER_SUBPROTOCOL}<token> subprotocol")
    return tokens[0]


def _offered_subprotocols(request: web.Request) -> list[str]:
    values = request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def _principal(
    request: web.Request, authenticator: Authenticator, tickets: TicketBook, now: float
) -> Principal:
    is_ws = request.path == WS_PATH
    offered = _offered_subprotocols(request) if is_ws else []
    if any(p.startswith(BEARER_SUBPROTOCOL) for p in offered) and WS_SUBPROTOCOL not in offered:
        # Else the handshake would select nothing and aiohttp would log the offered
        # subprotocols, token included; and a browser would fail the connection anyway.
        raise web.HTTPBadRequest(
            reason=f"offer the {WS_SUBPROTOCOL} subprotocol with {BEARER_SUBPROTOCOL}<token>"
        )
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        return authenticator.authenticate(_bearer(header))
    if not is_ws:
        raise AuthError("no credentials: send Authorization: Bearer <token>", missing=True)
    ticket = request.query.get("ticket")
    if ticket is not None:
        return tickets.redeem(ticket, now)
    token = _subprotocol_token(offered)
    if token is not None:
        return authenticator.authenticate(token)
    raise AuthError(
        "no credentials: send Authorization: Bearer <token>, a ?ticket= from "
        f"POST {TICKET_PATH}, or the {BEARER_SUBPROTOCOL}<token> subprotocol",
        missing=True,
    )


# Routes (by name) that take a per-session capability, ``?token=``, in place of credentials
# (an EventSource cannot send headers). Their handlers check it, and count a wrong one.
CAPABILITY_ROUTES = frozenset({"session-events"})


def presents_capability(request: web.Request) -> bool:
    return (
        hdrs.AUTHORIZATION not in request.headers
        and "token" in request.query
        and request.match_info.route.name in CAPABILITY_ROUTES
    )


def auth_middleware(
    authenticator: Authenticator,
    tickets: TicketBook,
    failures: RateLimiter,
    *,
    open_paths: frozenset[str] = OPEN_PATHS,
    checked_paths: frozenset[str] = frozenset(),
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """Guards every route outside ``open_paths`` before its handler runs; an address out of
    ``failures`` (failed attempts) gets 429 before its credentials are even read.

    Raises :class:`AuthError`, so it must sit inside ``error_middleware`` (later in the list).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Preflights carry no credentials by design (Fetch spec); CORS answers them.
        if request.method == hdrs.METH_OPTIONS:
            return await handler(request)
        if request.path in open_paths and not (
            request.path in checked_paths and hdrs.AUTHORIZATION in request.headers
        ):
            return await handler(request)
        if presents_capability(request):
            return await handler(request)  # which checks it (gateway.http.sessions)
        remote = client_address(request)
        client, now = client_key(remote), clock()
        wait = failures.wait(client, now)
        if wait is not None:
            # Right credentials too: else guessing would go on, only answered 429.
            logger.info(
                "refused %s %s from %s: too many failed authentications",
                request.method,
                loggable(request.path),
                remote,
            )
            return rate_limited(
                wait, "too many failed authentications from your address; try again later"
            )
        try:
            request[PRINCIPAL] = _principal(request, authenticator, tickets, now)
        except AuthError as exc:
            if not exc.missing:  # a guess; asking without credentials is not one
                failures.check(client, now)
            logger.info(
                "refused %s %s from %s: %s",
                request.method,
                loggable(request.path),  # decoded: %0A is a newline here
                remote,
                exc,
            )
            raise
        return await handler(request)

    return middleware


def ws_ticket_handler(
    tickets: TicketBook,
    requests: RateLimiter | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Handler:
    """``POST /ws-ticket`` → ``{"ticket": "...", "expires_in": 30}`` for ``/ws?ticket=``.
    ``requests`` limits how often one address may ask (429 beyond it)."""

    async def ws_ticket(request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if principal is None:  # mounted without auth_middleware: hand out nothing
            raise AuthError("this route needs authentication", missing=True)
        client, now = client_key(client_address(request)), clock()
        wait = requests.check(client, now) if requests is not None else None
        if wait is not None:
            return rate_limited(wait, "too many ticket requests from your address")
        wait = tickets.retry_after(client, now)
        if wait is not None:
            return rate_limited(
                wait,
                f"your address holds {tickets.per_client} unused tickets; use one or let it expire",
            )
        ticket = tickets.issue(principal, now, client=client)
        return web.json_response(
            {"ticket": ticket, "expires_in": round(tickets.ttl_s)},
            headers={"Cache-Control": "no-store"},
        )

    return ws_ticket


def principal_of(request: web.Request) -> Principal | None:
    """Who is asking; ``None`` with ``--auth none``."""
    return request.get(PRINCIPAL)


def setup_auth(
    app: web.Application, config: Config, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Installs what ``--auth`` asks for: the middleware (appended, so innermost), the
    ticket book on ``app[TICKETS]``, the failed-attempt budgets on ``app[AUTH_FAILURES]`` and
    ``POST /ws-ticket``. Nothing for ``--auth none``.
    Reads the key files now; :class:`ConfigError` if one is missing or bad."""
    authenticator = build_authenticator(config)
    if authenticator is None:
        return
    app[TICKETS] = tickets = TicketBook()
    app[AUTH_FAILURES] = failures = RateLimiter(AUTH_FAILURES_PER_MINUTE, AUTH_FAILURE_BURST)
    # With a TURN relay, /config gives an authenticated client its credentials for it.
    checked = frozenset({"/config"}) if config.turn_urls else frozenset()
    app.middlewares.append(
        auth_middleware(authenticator, tickets, failures, checked_paths=checked, clock=clock)
    )
    requests = RateLimiter(TICKETS_PER_MINUTE, TICKET_BURST)
    app.router.add_post(TICKET_PATH, ws_ticket_handler(tickets, requests, clock=clock))


class GatewayAccessLogger(AbstractAccessLogger):
    """The access log without query strings or headers: aiohttp's default line is the whole
    request line (``%r``), which would record ``/ws?ticket=...``.

    ``web.run_app(app, access_log_class=GatewayAccessLogger)``.
    """

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # The client behind a trusted proxy, as every other log line names it.
        client = client_address(request) if isinstance(request, web.Request) else request.remote
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            client or "-",
            loggable(request.method),
            # Still percent-encoded, as sent; loggable() for whatever bytes a lenient parser
            # lets through.
            loggable(request.rel_url.raw_path),
            response.status,
            response.body_length,
            1000 * time,
        )
