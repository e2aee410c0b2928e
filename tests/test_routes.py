"""HTTP contract: statuses and JSON error shapes; bad offers leave nothing behind; TLS."""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from gateway.http.app import build_app
from gateway.http.state import SESSIONS
from gateway.ops.cli import _tls_context
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient
from signalling.ice import IcePolicy
from signalling.peer import new_peer_connection
from tests.conftest import EngineCache, GatewayFactory, Ollama, connect


async def test_health_is_exactly_ok(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"ok": True}


async def test_config_has_what_a_browser_needs(gateway: GatewayFactory) -> None:
    client = await gateway(ice_servers=("stun:stun.example.org:3478",))
    body = await (await client.get("/config")).json()
    assert body["protocol"] == 1
    assert body["ice_servers"] == [{"urls": "stun:stun.example.org:3478"}]
    assert body["asr"] == {"engine": "openai-whisper", "model": "tiny.en"}


async def test_page_loads_nothing_from_outside(gateway: GatewayFactory) -> None:
    client = await gateway()
    page = await client.get("/")
    html = await page.text()
    assert page.status == 200
    assert page.content_type == "text/html"
    script = await client.get("/app.js")
    assert script.status == 200
    for text in (html, await script.text()):
        assert "http://" not in text
        assert "https://" not in text


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"not json", "application/json", 400, "bad_offer"),
        (b'{"type": "offer", "sdp": "v=0\\r\\n"}', "application/json", 400, "bad_offer"),
        (b'{"type": "answer", "sdp": "v=0"}', "application/json", 400, "bad_offer"),
        (b"x" * (2 * 1024 * 1024), "application/json", 413, "too_large"),
        # The body fits the HTTP limit; the SDP in it is over its own.
        (
            b'{"type": "offer", "sdp": "' + b"v=0 " * 17_500 + b'"}',
            "application/json",
            413,
            "too_large",
        ),
    ],
)
async def test_bad_offers_are_refused_and_leave_nothing(
    gateway: GatewayFactory, body: bytes, content_type: str, status: int, code: str
) -> None:
    client = await gateway()
    payload = io.BytesIO(body)  # aiohttp warns about large raw bytes bodies
    response = await client.post("/offer", data=payload, headers={"Content-Type": content_type})
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"]
    assert len(client.app[SESSIONS]) == 0


async def test_offer_the_webrtc_stack_rejects_is_400_and_closes_the_peer(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiortc raises assorted exceptions on offers it cannot handle (the validator catches
    # every case we know); whatever it raises must become a 400 and a closed peer.
    created: list[RTCPeerConnection] = []

    def tracked(servers: Sequence[str], policy: IcePolicy | None = None) -> RTCPeerConnection:
        created.append(new_peer_connection(servers, policy))
        return created[-1]

    async def explode(self: RTCPeerConnection, description: object) -> None:
        raise AssertionError("mangled media section")

    monkeypatch.setattr("gateway.http.webrtc.new_peer_connection", tracked)
    monkeypatch.setattr(RTCPeerConnection, "setRemoteDescription", explode)
    client = await gateway()
    peer = LoopbackClient()
    response = await client.post("/offer", json={"type": "offer", "sdp": await peer.offer()})
    await peer.close()

    assert response.status == 400
    message = (await response.json())["error"]["message"]
    assert message == "offer rejected by the WebRTC stack: AssertionError: mangled media section"
    assert len(client.app[SESSIONS]) == 0
    assert [pc.connectionState for pc in created] == ["closed"]


async def test_unknown_route_and_method_are_json(gateway: GatewayFactory) -> None:
    client = await gateway()
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.get("/offer")
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "method_not_allowed"


async def test_https_with_the_local_ca(tmp_path: Path, engines: EngineCache) -> None:
    config = Config(cert_dir=tmp_path / "certs", port=0, tts_engine="none", admission="off")
    server_ssl = _tls_context(config)
    runner = web.AppRunner(build_app(config, engine=engines.get("openai-whisper")))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    try:
        port = runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(tmp_path / "certs" / "rootCA.pem"))
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"https://localhost:{port}/health", ssl=trust) as response,
        ):
            assert await response.json() == {"ok": True}
        strict = ssl.create_default_context()  # the system store does not know our CA
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://localhost:{port}/health", ssl=strict)
    finally:
        await runner.cleanup()


async def test_ready_reports_each_check(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url)
    body = await (await client.get("/ready")).json()
    assert body["ok"] is True
    assert body["checks"]["asr"]["model"] == "tiny.en"
    assert body["checks"]["llm"]["model_present"] is True

    state.models = ["mistral:latest"]
    calls = state.calls["GET /api/tags"]
    assert (await client.get("/ready")).status == 200  # cached: Ollama is not asked again
    assert state.calls["GET /api/tags"] == calls
    await asyncio.sleep(2.1)
    missing = await client.get("/ready")
    assert missing.status == 503
    llm = (await missing.json())["checks"]["llm"]
    assert llm == {
        "ok": False,
        "reachable": True,
        "model_present": False,
        "message": llm["message"],
    }
    assert "ollama pull llama3.2" in llm["message"]


async def test_ready_is_503_when_ollama_is_down(gateway: GatewayFactory) -> None:
    client = await gateway(ollama_host="http://127.0.0.1:9")
    response = await client.get("/ready")
    assert response.status == 503
    llm = (await response.json())["checks"]["llm"]
    assert llm["reachable"] is False
    assert "ollama serve" in llm["message"]


async def test_metrics_count_sessions_and_turns(gateway: GatewayFactory, ollama: Ollama) -> None:
    client = await gateway(ollama_host=ollama[1])
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("hello")
        while (await ws.receive_json(timeout=10))["type"] != "reply.done":
            pass
    peer, session_id = await connect(client)
    await client.delete(f"/sessions/{session_id}")
    await peer.close()

    for _ in range(50):  # the socket's handler finishes just after the client has gone
        response = await client.get("/metrics")
        text = await response.text()
        if "gateway_sessions_active 0.0" in text:
            break
        await asyncio.sleep(0.05)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'gateway_sessions_started_total{transport="webrtc"} 1.0' in text
    assert 'gateway_sessions_ended_total{reason="deleted"} 1.0' in text
    assert 'gateway_sessions_started_total{transport="ws"} 1.0' in text
    assert "gateway_sessions_active 0.0" in text
    assert 'gateway_replies_total{outcome="done"} 1.0' in text
    assert "gateway_llm_first_token_seconds_count 1.0" in text
    assert "gateway_offer_seconds_count 1.0" in text
    assert "gateway_event_loop_lag_seconds" in text
    assert "gateway_event_loop_delay_seconds_bucket" in text
    assert "gateway_asyncio_tasks" in text
    assert "process_open_fds" in text
    assert 'python_gc_collections_total{generation="2"}' in text  # full collections
