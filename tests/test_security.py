"""The gateway as served with --auth: refused requests make no peer connection; a valid
token talks over WebRTC and /ws."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.state import SESSIONS
from tests.conftest import GatewayFactory
from tests.loopback import LoopbackClient

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
    monkeypatch.setattr("gateway.webrtc.new_peer_connection", lambda *args: made.append(args))
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


async def test_ws_token_in_subprotocol(secured: TestClient) -> None:  # type: ignore[type-arg]
    protocols = ("events.v1", f"bearer.{token(aud='gateway')}")
    async with secured.ws_connect("/ws", protocols=protocols) as ws:
        assert ws.protocol == "events.v1"
        assert (await ws.receive_json(timeout=5))["type"] == "session.ready"
