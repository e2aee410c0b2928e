"""Authentication: the authenticators and the ticket book as pure units, then the middleware
over HTTP. A refused request must never reach its handler (so no peer connection, no socket)
and no credential may reach a log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import AuthError, ConfigError
from gateway.http.auth import (
    BEARER_SUBPROTOCOL,
    JWT_LEEWAY_S,
    TICKET_PATH,
    TICKETS,
    WS_SUBPROTOCOL,
    Authenticator,
    GatewayAccessLogger,
    Principal,
    TicketBook,
    build_authenticator,
    principal_of,
    setup_auth,
)
from gateway.http.middleware import error_middleware
from gateway.ops.config import Config
from tests.conftest import AiohttpClient

AUDIENCE = "local-ai-gateway"
ISSUER = "https://issuer.example"
API_KEYS = ("k" * 16, "0123456789abcdef0123456789abcdef")
HS_SECRET = b"s3cret-" * 8


@dataclass(frozen=True)
class Keys:
    rsa_key: rsa.RSAPrivateKey
    other_rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        other_rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
    )


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims; a change to None removes the claim."""
    base: dict[str, Any] = {
        "sub": "alice",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT built segment by segment, for tokens PyJWT refuses to make."""
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    return signing_input + "." + b64url(sign(signing_input.encode()))


def rs256(keys: Keys, **changes: Any) -> str:
    return jwt.encode(claims(**changes), keys.rsa_key, algorithm="RS256")


def rsa_config(tmp_path: Path, keys: Keys) -> Config:
    return Config(
        auth="jwt",
        jwt_public_key=write(tmp_path / "jwt.pem", public_pem(keys.rsa_key)),
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
    )


def api_key_config(tmp_path: Path) -> Config:
    text = "# keys for the gateway\n\n" + "\n".join(API_KEYS) + "\n"
    return Config(auth="api-key", api_keys_file=write(tmp_path / "keys.txt", text))


def authenticator(config: Config) -> Authenticator:
    built = build_authenticator(config)
    assert built is not None
    return built


# Every bad token the issue lists, with what the refusal says about it.
BAD_TOKENS: dict[str, tuple[Callable[[Keys], str], str]] = {
    "not a jwt": (lambda k: "not-a-jwt", "malformed"),
    "badly signed": (
        lambda k: jwt.encode(claims(), k.other_rsa_key, algorithm="RS256"),
        "signature does not verify",
    ),
    "alg none": (
        lambda k: hand_made({"alg": "none", "typ": "JWT"}, claims(), lambda _: b""),
        "algorithm not accepted",
    ),
    "hs256 signed with the public key": (
        lambda k: hand_made(
            {"alg": "HS256", "typ": "JWT"},
            claims(),
            lambda data: hmac.new(public_pem(k.rsa_key), data, hashlib.sha256).digest(),
        ),
        "algorithm not accepted",
    ),
    "expired beyond the leeway": (
        lambda k: rs256(k, exp=int(time.time()) - JWT_LEEWAY_S - 30),
        "expired",
    ),
    "nbf in the future": (
        lambda k: rs256(k, nbf=int(time.time()) + JWT_LEEWAY_S + 60),
        "not valid yet",
    ),
    "wrong audience": (lambda k: rs256(k, aud="someone-else"), "audience"),
    "no audience": (lambda k: rs256(k, aud=None), "'aud'"),
    "wrong issuer": (lambda k: rs256(k, iss="https://evil.example"), "issuer"),
    "no exp": (lambda k: rs256(k, exp=None), "'exp'"),
}


# --- the authenticators ---


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_jwts_are_refused_and_the_reason_does_not_echo_them(
    case: str, keys: Keys, tmp_path: Path
) -> None:
    make, reason = BAD_TOKENS[case]
    token = make(keys)
    with pytest.raises(AuthError, match=reason) as caught:
        authenticator(rsa_config(tmp_path, keys)).authenticate(token)
    assert token not in str(caught.value)
    assert caught.value.code == "unauthorized"


def test_good_rs256_token_names_its_subject(keys: Keys, tmp_path: Path) -> None:
    principal = authenticator(rsa_config(tmp_path, keys)).authenticate(rs256(keys))
    assert principal == Principal("alice", "jwt")


def test_leeway_absorbs_small_clock_skew(keys: Keys, tmp_path: Path) -> None:
    auth = authenticator(rsa_config(tmp_path, keys))
    now = int(time.time())
    # Margins of JWT_LEEWAY_S / 3 either way: PyJWT reads the wall clock itself.
    auth.authenticate(rs256(keys, exp=now - JWT_LEEWAY_S // 3))
    auth.authenticate(rs256(keys, nbf=now + JWT_LEEWAY_S // 3))
    with pytest.raises(AuthError, match="expired"):
        auth.authenticate(rs256(keys, exp=now - JWT_LEEWAY_S - JWT_LEEWAY_S // 3))


def test_es256_key_takes_es256_tokens_only(keys: Keys, tmp_path: Path) -> None:
    config = Config(auth="jwt", jwt_public_key=write(tmp_path / "ec.pem", public_pem(keys.ec_key)))
    auth = authenticator(config)
    good = jwt.encode(claims(aud=None, iss=None), keys.ec_key, algorithm="ES256")
    assert auth.authenticate(good) == Principal("alice", "jwt")
    with pytest.raises(AuthError, match="takes ES256 only"):
        auth.authenticate(jwt.encode(claims(aud=None, iss=None), keys.rsa_key, algorithm="RS256"))


def test_hs256_secret_file(keys: Keys, tmp_path: Path) -> None:
    config = Config(auth="jwt", jwt_secret_file=write(tmp_path / "secret", HS_SECRET + b"\n"))
    auth = authenticator(config)
    payload = claims(aud=None, iss=None)
    assert auth.authenticate(jwt.encode(payload, HS_SECRET, algorithm="HS256")).subject == "alice"
    with pytest.raises(AuthError, match="signature"):
        auth.authenticate(jwt.encode(payload, HS_SECRET[::-1], algorithm="HS256"))
    with pytest.raises(AuthError, match="takes HS256 only"):
        auth.authenticate(jwt.encode(payload, keys.rsa_key, algorithm="RS256"))


def test_api_keys_right_and_wrong(tmp_path: Path) -> None:
    auth = authenticator(api_key_config(tmp_path))
    assert auth.authenticate(API_KEYS[0]) == Principal("key1", "api-key")
    assert auth.authenticate(API_KEYS[1]) == Principal("key2", "api-key")
    for wrong in ("", API_KEYS[1][:-1], API_KEYS[1] + "0", API_KEYS[1].upper(), "é" * 20):
        with pytest.raises(AuthError, match="unknown API key"):
            auth.authenticate(wrong)


def test_auth_none_builds_nothing() -> None:
    assert build_authenticator(Config()) is None


@pytest.mark.parametrize(
    ("content", "flag", "reason"),
    [
        (None, "--api-keys-file", "cannot read"),
        ("\n  \n", "--api-keys-file", "is empty"),
        ("# only a comment\n", "--api-keys-file", "no keys"),
        (f"{API_KEYS[0]}\nshort-key\n", "--api-keys-file", "line 2: a key needs at least 16"),
        ("has spaces inside it\n", "--api-keys-file", "line 1: a key may hold only"),
    ],
)
def test_bad_api_keys_file_names_the_flag_not_the_key(
    content: str | None, flag: str, reason: str, tmp_path: Path
) -> None:
    path = tmp_path / "keys.txt"
    if content is not None:
        write(path, content)
    with pytest.raises(ConfigError, match=reason) as caught:
        build_authenticator(Config(auth="api-key", api_keys_file=path))
    assert caught.value.flag == flag
    assert "short-key" not in str(caught.value)


def test_short_hs256_secret_is_refused(tmp_path: Path) -> None:
    config = Config(auth="jwt", jwt_secret_file=write(tmp_path / "secret", b"x" * 31 + b"\n"))
    with pytest.raises(ConfigError, match="31 bytes") as caught:
        build_authenticator(config)
    assert caught.value.flag == "--jwt-secret-file"


@pytest.mark.parametrize(
    ("make_pem", "reason"),
    [
        (lambda k: b"not a key", "not a PEM public key"),
        (
            lambda k: k.rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "not a PEM public key",
        ),
        (
            lambda k: public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "1024-bit",
        ),
        (lambda k: public_pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
    ],
)
def test_unusable_public_key_is_refused(
    make_pem: Callable[[Keys], bytes], reason: str, keys: Keys, tmp_path: Path
) -> None:
    config = Config(auth="jwt", jwt_public_key=write(tmp_path / "key.pem", make_pem(keys)))
    with pytest.raises(ConfigError, match=reason) as caught:
        build_authenticator(config)
    assert caught.value.flag == "--jwt-public-key"


# --- the ticket book ---

ALICE = Principal("alice", "jwt")


def test_ticket_is_single_use() -> None:
    book = TicketBook()
    ticket = book.issue(ALICE, now=100.0, client="192.0.2.1")
    assert len(ticket) >= 40  # 32 random bytes, base64url
    assert book.redeem(ticket, now=101.0) == ALICE
    with pytest.raises(AuthError, match="already used"):
        book.redeem(ticket, now=101.0)
    with pytest.raises(AuthError, match="unknown"):
        book.redeem("made-up", now=101.0)


def test_ticket_expires_after_its_ttl() -> None:
    book = TicketBook(ttl_s=30.0)
    early, late = book.issue(ALICE, 0.0, client="a"), book.issue(ALICE, 0.0, client="a")
    assert book.redeem(early, now=29.9) == ALICE
    with pytest.raises(AuthError, match="expired"):
        book.redeem(late, now=30.0)


def test_ticket_book_is_bounded_and_sweeps_expired() -> None:
    book = TicketBook(ttl_s=30.0, limit=3)
    first, *rest = [book.issue(ALICE, float(t), client=f"c{t}") for t in range(4)]
    assert len(book) == 3
    assert book.dropped == 1
    with pytest.raises(AuthError):
        book.redeem(first, now=5.0)
    assert book.redeem(rest[0], now=5.0) == ALICE
    book.issue(ALICE, now=100.0, client="c0")  # the others expired: swept, not dropped
    assert len(book) == 1
    assert book.dropped == 1


def test_a_client_at_its_ticket_cap_waits_and_evicts_nobody() -> None:
    book = TicketBook(ttl_s=30.0, limit=8, per_client=2)
    bob = book.issue(ALICE, now=0.0, client="192.0.2.9")
    mine = [book.issue(ALICE, now=float(t), client="192.0.2.1") for t in (1, 2)]
    # At its cap: wait until its oldest expires (issued at 1 s, so at 31 s).
    assert book.retry_after("192.0.2.1", now=10.0) == pytest.approx(21.0)
    assert book.retry_after("192.0.2.9", now=10.0) is None
    assert book.retry_after("192.0.2.77", now=10.0) is None
    # Redeeming one frees a place.
    assert book.redeem(mine[0], now=11.0) == ALICE
    assert book.retry_after("192.0.2.1", now=11.0) is None
    book.issue(ALICE, now=11.0, client="192.0.2.1")
    assert book.retry_after("192.0.2.1", now=11.0) == pytest.approx(21.0)
    # Issued regardless (a caller that did not ask first), a client loses its own oldest.
    latest = [book.issue(ALICE, now=20.0 + t, client="192.0.2.1") for t in range(5)]
    assert book.redeem(bob, now=25.0) == ALICE
    assert book.dropped == 0
    assert len(book) == 2
    with pytest.raises(AuthError):
        book.redeem(latest[2], now=25.0)
    # Expiry frees places too.
    assert book.retry_after("192.0.2.1", now=52.0) == pytest.approx(1.0)
    assert book.retry_after("192.0.2.1", now=53.0) is None


def test_ticket_book_memory_is_bounded_by_both_caps() -> None:
    book = TicketBook(ttl_s=30.0, limit=4, per_client=2)
    for n in range(40):
        book.issue(ALICE, now=0.0, client=f"198.51.100.{n % 10}")
        assert len(book) <= 4
    assert book.dropped == 36


# --- over HTTP ---


def tiny_app(config: Config) -> tuple[web.Application, Counter[str]]:
    """Stand-ins for the real handlers, counting what reached them."""
    calls: Counter[str] = Counter()

    def spy(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            calls[name] += 1
            principal = principal_of(request)
            return web.json_response({"subject": principal.subject if principal else None})

        return handler

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        calls["ws"] += 1
        ws = web.WebSocketResponse(protocols=(WS_SUBPROTOCOL,))
        await ws.prepare(request)
        principal = principal_of(request)
        await ws.send_json({"subject": principal.subject if principal else None})
        await ws.close()
        return ws

    async def preflight(request: web.Request) -> web.Response:
        calls["preflight"] += 1
        return web.Response(status=204)

    app = web.Application(middlewares=[error_middleware])
    setup_auth(app, config)
    app.router.add_get("/health", spy("health"))
    app.router.add_post("/offer", spy("offer"))
    app.router.add_route("OPTIONS", "/offer", preflight)
    app.router.add_delete("/sessions/{session_id}", spy("delete"))
    app.router.add_get("/metrics", spy("metrics"))
    app.router.add_get("/ws", websocket)
    return app, calls


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_refused(
    response: aiohttp.ClientResponse, *, missing: bool = False, secret: str = ""
) -> None:
    assert response.status == 401
    body = await response.json()
    assert body["error"]["code"] == "unauthorized"
    if secret:
        assert secret not in body["error"]["message"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="local-ai-gateway"')
    assert ('error="invalid_token"' in challenge) is not missing


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_jwt_is_401_before_any_peer_connection(
    case: str, keys: Keys, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(rsa_config(tmp_path, keys))
    client = await aiohttp_client(app)
    token = BAD_TOKENS[case][0](keys)
    response = await client.post(
        "/offer", json={"sdp": "v=0", "type": "offer"}, headers=bearer(token)
    )
    await assert_refused(response, secret=token)
    assert calls["offer"] == 0


@pytest.mark.parametrize("authorization", [None, "Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer  "])
async def test_missing_or_malformed_authorization_is_401(
    authorization: str | None, keys: Keys, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(rsa_config(tmp_path, keys))
    client = await aiohttp_client(app)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("POST", "/offer"), ("DELETE", "/sessions/abc"), ("GET", "/metrics")]:
        response = await client.request(method, path, headers=headers)
        await assert_refused(response, missing=authorization is None)
    assert sum(calls.values()) == 0


async def test_good_jwt_reaches_the_handler(
    keys: Keys, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(rsa_config(tmp_path, keys))
    client = await aiohttp_client(app)
    response = await client.post("/offer", headers=bearer(rs256(keys)))
    assert response.status == 200
    assert await response.json() == {"subject": "alice"}
    assert calls["offer"] == 1


async def test_api_keys_over_http(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    app, calls = tiny_app(api_key_config(tmp_path))
    client = await aiohttp_client(app)
    good = await client.get("/metrics", headers=bearer(API_KEYS[1]))
    assert good.status == 200
    assert await good.json() == {"subject": "key2"}
    await assert_refused(await client.get("/metrics", headers=bearer("x" * 32)))
    assert calls["metrics"] == 1


async def test_health_preflight_open_and_unknown_routes_closed(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(api_key_config(tmp_path))
    client = await aiohttp_client(app)
    assert (await client.get("/health")).status == 200
    preflight = await client.options(
        "/offer",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    # Fail closed: a route nobody opened is guarded, even one that does not exist.
    await assert_refused(await client.get("/not-a-route"), missing=True)
    await assert_refused(await client.get("/health/"), missing=True)
    assert calls == Counter({"health": 1, "preflight": 1})


async def test_ws_ticket_works_once(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    app, calls = tiny_app(api_key_config(tmp_path))
    client = await aiohttp_client(app)
    await assert_refused(await client.post(TICKET_PATH), missing=True)

    response = await client.post(TICKET_PATH, headers=bearer(API_KEYS[0]))
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["expires_in"] == 30
    ticket = body["ticket"]
    assert len(app[TICKETS]) == 1

    # A ticket is for /ws only.
    await assert_refused(await client.post(f"/offer?ticket={ticket}"), missing=True)

    ws = await client.ws_connect(f"/ws?ticket={ticket}")
    assert await ws.receive_json() == {"subject": "key1"}
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as second:
        await client.ws_connect(f"/ws?ticket={ticket}")
    assert second.value.status == 401
    assert calls["ws"] == 1
    assert len(app[TICKETS]) == 0


async def test_ws_without_credentials_is_refused_before_upgrade(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(api_key_config(tmp_path))
    client = await aiohttp_client(app)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", protocols=(WS_SUBPROTOCOL,))
    assert refused.value.status == 401
    assert calls["ws"] == 0


async def test_token_in_subprotocol_is_accepted_and_events_v1_echoed(
    keys: Keys, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, calls = tiny_app(rsa_config(tmp_path, keys))
    client = await aiohttp_client(app)
    token = rs256(keys)
    ws = await client.ws_connect("/ws", protocols=(WS_SUBPROTOCOL, BEARER_SUBPROTOCOL + token))
    assert ws.protocol == WS_SUBPROTOCOL  # what a browser needs back, and never the token
    assert await ws.receive_json() == {"subject": "alice"}
    await ws.close()

    bad = BAD_TOKENS["alg none"][0](keys)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", protocols=(WS_SUBPROTOCOL, BEARER_SUBPROTOCOL + bad))
    assert refused.value.status == 401
    assert calls["ws"] == 1


async def test_bearer_subprotocol_alone_is_refused_without_logging_it(
    keys: Keys, tmp_path: Path, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, calls = tiny_app(rsa_config(tmp_path, keys))
    client = await aiohttp_client(app)
    token = rs256(keys)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", protocols=(BEARER_SUBPROTOCOL + token,))
    assert refused.value.status == 400
    assert calls["ws"] == 0
    assert token not in caplog.text


async def test_access_log_has_no_tokens_or_tickets(
    tmp_path: Path, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, _ = tiny_app(api_key_config(tmp_path))
    server = TestServer(app)
    await server.start_server(access_log_class=GatewayAccessLogger)
    client = await aiohttp_client(server)

    key = API_KEYS[1]
    ticket = (await (await client.post(TICKET_PATH, headers=bearer(key))).json())["ticket"]
    ws = await client.ws_connect(f"/ws?ticket={ticket}")
    await ws.receive_json()
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect(f"/ws?ticket={ticket}")
    ws = await client.ws_connect("/ws", protocols=(WS_SUBPROTOCOL, BEARER_SUBPROTOCOL + key))
    await ws.close()
    await client.get(f"/metrics?api_key={key}", headers=bearer("wrong-" + key))

    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"POST /ws-ticket" 200' in line for line in access)
    assert any('"GET /ws" 101' in line for line in access)
    assert any('"GET /ws" 401' in line for line in access)
    assert any('"GET /metrics" 401' in line for line in access)
    assert any("refused GET /ws" in r.getMessage() for r in caplog.records)
    for secret in (key, ticket):
        assert secret not in caplog.text
