"""The gateway as served with --auth: refused requests make no peer connection; a valid
token talks over WebRTC and /ws."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.http.app import build_app
from gateway.http.auth import (
    AUTH_FAILURE_BURST,
    AUTH_FAILURES,
    MAX_TICKETS_PER_CLIENT,
    TICKETS,
    GatewayAccessLogger,
    Principal,
)
from gateway.http.state import SESSIONS
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient
from tests.conftest import AiohttpClient, EngineCache, GatewayFactory

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(**claims: object) -> str:
    body: dict[str, object] = {"sub": "me", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
async def secured(gateway: GatewayFactory, tmp_path: Path) -> TestClient:  # type: ignore[type-arg]
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRET)
    return await gateway(auth="jwt", jwt_secret_file=secret, jwt_audience="gateway")


async def test_refused_offer_makes_no_peer_connection(
    secured: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[object] = []
    monkeypatch.setattr("gateway.http.webrtc.new_peer_connection", lambda *args: made.append(args))
    peer = LoopbackClient()
    offer = {"type": "offer", "sdp": await peer.offer()}
    await peer.close()
    bad_tokens = {
        "missing": None,
        "garbage": "not-a-token",
        "wrong audience": token(aud="someone-else"),
        "expired": token(aud="gateway", exp=int(time.time()) - 3600),
        "wrong key": jwt.encode(
            {"aud": "gateway", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256"
        ),
    }
    for name, bad in bad_tokens.items():
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        response = await secured.post("/offer", json=offer, headers=headers)
        assert response.status == 401, name
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert made == []
    assert len(secured.app[SESSIONS]) == 0


async def test_valid_token_talks(secured: TestClient) -> None:  # type: ignore[type-arg]
    assert (await secured.get("/health")).status == 200
    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    assert (await secured.get("/metrics")).status == 401
    assert (await secured.get("/metrics", headers=auth)).status == 200

    peer = LoopbackClient()
    response = await secured.post(
        "/offer", json={"type": "offer", "sdp": await peer.offer()}, headers=auth
    )
    assert response.status == 200
    answer = await response.json()
    await peer.accept(answer)
    assert (await peer.next_event("session.ready"))["session_id"] == answer["session_id"]
    assert (await secured.delete(f"/sessions/{answer['session_id']}")).status == 401
    assert (await secured.delete(f"/sessions/{answer['session_id']}", headers=auth)).status == 204
    await peer.close()


async def test_ws_ticket_is_single_use(secured: TestClient) -> None:  # type: ignore[type-arg]
    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    ticket = (await (await secured.post("/ws-ticket", headers=auth)).json())["ticket"]
    async with secured.ws_connect(f"/ws?ticket={ticket}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "session.ready"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await secured.ws_connect(f"/ws?ticket={ticket}")
    assert refused.value.status == 401


async def test_failed_logins_are_rate_limited_per_address(
    secured: TestClient,  # type: ignore[type-arg]
) -> None:
    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    # Asking without credentials is not guessing: it does not count.
    for _ in range(AUTH_FAILURE_BURST + 2):
        assert (await secured.get("/metrics")).status == 401
    assert (await secured.get("/metrics", headers=auth)).status == 200

    guesses = [
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {token(aud='someone-else')}"},
    ]
    statuses = [
        (await secured.get("/metrics", headers=guesses[n % 2])).status
        for n in range(AUTH_FAILURE_BURST)
    ]
    assert statuses == [401] * AUTH_FAILURE_BURST
    # Bad /ws tickets are guesses too; and past the burst every attempt is refused unread,
    # a right one included, or guessing would go on behind the 429s.
    for path, headers in [
        ("/metrics", guesses[0]),
        ("/ws?ticket=made-up", {}),
        ("/ws-ticket", auth),
        ("/metrics", auth),
    ]:
        response = await secured.request(
            "POST" if path == "/ws-ticket" else "GET", path, headers=headers
        )
        assert response.status == 429, path
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"]["code"] == "rate_limited"
    # Open routes stay open; other addresses are not affected.
    assert (await secured.get("/health")).status == 200
    limiter = secured.app[AUTH_FAILURES]
    assert limiter.wait("192.0.2.1", time.monotonic()) is None


async def test_one_address_cannot_evict_other_addresses_tickets(
    secured: TestClient,  # type: ignore[type-arg]
) -> None:
    book = secured.app[TICKETS]
    someone_else = book.issue(Principal("bob", "jwt"), time.monotonic(), client="192.0.2.7")
    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    statuses = []
    for _ in range(MAX_TICKETS_PER_CLIENT + 5):
        response = await secured.post("/ws-ticket", headers=auth)
        statuses.append(response.status)
    assert statuses == [200] * MAX_TICKETS_PER_CLIENT + [429] * 5
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert (await response.json())["error"]["code"] == "rate_limited"
    assert len(book) == MAX_TICKETS_PER_CLIENT + 1
    async with secured.ws_connect(f"/ws?ticket={someone_else}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "session.ready"


async def test_ticket_requests_are_rate_limited_per_address(
    gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redeemed at once, tickets never reach the per-address cap: the request rate still binds.
    monkeypatch.setattr("gateway.http.auth.TICKET_BURST", 3)
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRET)
    client = await gateway(auth="jwt", jwt_secret_file=secret, jwt_audience="gateway")
    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    statuses = []
    for _ in range(4):
        response = await client.post("/ws-ticket", headers=auth)
        statuses.append(response.status)
        if response.status == 200:
            client.app[TICKETS].redeem((await response.json())["ticket"], time.monotonic())
    assert statuses == [200, 200, 200, 429]
    assert int(response.headers["Retry-After"]) >= 1
    assert "ticket requests" in (await response.json())["error"]["message"]


async def test_ws_token_in_subprotocol(secured: TestClient) -> None:  # type: ignore[type-arg]
    protocols = ("events.v1", f"bearer.{token(aud='gateway')}")
    async with secured.ws_connect("/ws", protocols=protocols) as ws:
        assert ws.protocol == "events.v1"
        assert (await ws.receive_json(timeout=5))["type"] == "session.ready"


async def test_offer_rate_limit_is_429(gateway: GatewayFactory) -> None:
    client = await gateway(offer_rate=2)
    statuses = []
    for _ in range(3):
        response = await client.post("/offer", json={"type": "offer", "sdp": "v=0"})
        statuses.append(response.status)
    assert statuses == [400, 400, 429]
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "rate_limited"


async def test_sessions_per_client_address(gateway: GatewayFactory) -> None:
    client = await gateway(sessions_per_client=1)
    peer = LoopbackClient()
    first = await client.post("/offer", json={"type": "offer", "sdp": await peer.offer()})
    assert first.status == 200
    other = LoopbackClient()
    second = await client.post("/offer", json={"type": "offer", "sdp": await other.offer()})
    await other.close()
    assert second.status == 429
    assert len(client.app[SESSIONS]) == 1
    # Ending the first frees the address's slot.
    session_id = (await first.json())["session_id"]
    assert (await client.delete(f"/sessions/{session_id}")).status == 204
    third = LoopbackClient()
    again = await client.post("/offer", json={"type": "offer", "sdp": await third.offer()})
    assert again.status == 200
    await third.close()
    await peer.close()


async def test_cors_preflight_and_ws_origin(gateway: GatewayFactory) -> None:
    client = await gateway(cors_origins=("http://localhost:3000",))
    allowed = await client.options(
        "/offer",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    assert "Origin" in allowed.headers["Vary"]
    denied = await client.options(
        "/offer",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert denied.status == 403
    assert "Access-Control-Allow-Origin" not in denied.headers

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    async with client.ws_connect("/ws", headers={"Origin": "http://localhost:3000"}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "session.ready"


async def test_page_security_headers(gateway: GatewayFactory) -> None:
    client = await gateway()
    page = await client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"


async def test_without_tls_only_local_host_names(gateway: GatewayFactory) -> None:
    client = await gateway()
    rebound = await client.get("/health", headers={"Host": "evil.example:8001"})
    assert rebound.status == 403
    assert (await client.get("/health", headers={"Host": "localhost:8001"})).status == 200


async def test_client_text_is_logged_escaped_and_cut(
    aiohttp_client: AiohttpClient,
    engines: EngineCache,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRET)
    config = Config(
        no_tls=True,
        tts_engine="none",
        auth="jwt",
        jwt_secret_file=secret,
        jwt_audience="gateway",
        admission="off",
    )
    app = build_app(config, engine=engines.get("openai-whisper"))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app.router.add_get("/boom/{tail:[^/]*}", boom)  # reaches the error middleware's log
    server = TestServer(app)
    await server.start_server(access_log_class=GatewayAccessLogger)
    client = await aiohttp_client(server)

    auth = {"Authorization": f"Bearer {token(aud='gateway')}"}
    assert (await client.get("/x%0A1970-01-01 INFO forged%0D%0Aline")).status == 401
    assert (await client.get("/boom/%0A1970-01-01 INFO forged", headers=auth)).status == 500

    huge = "https://" + "a" * 5000 + ".example"
    preflight = {"Origin": huge, "Access-Control-Request-Method": "POST"}
    assert (await client.options("/offer", headers=preflight)).status == 403
    assert (await client.get("/health", headers={"Host": "evil.example"})).status == 403

    messages = [r.getMessage() for r in caplog.records]
    lines = [m for m in messages if "forged" in m]
    # The refusal, the unhandled error and both access lines, each on one line.
    assert len(lines) >= 4, lines
    for line in lines:
        assert len(line.splitlines()) == 1, line
    assert any("refused GET /x\\n1970-01-01 INFO forged\\r\\nline" in line for line in lines)
    assert any(m.startswith("refused Host evil.example from") for m in messages)
    refused_origin = [m for m in messages if m.startswith("refused preflight")]
    assert len(refused_origin) == 1
    assert len(refused_origin[0]) < 400  # cut, not 5 KB
