"""The transport-neutral session core, and both transports through the real app: clocks,
limits, the outbox, ``DELETE``, shutdown, and replies of any size."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from gateway.conversation.dialogue import Conversation
from gateway.http import ws
from gateway.http.state import SESSIONS
from gateway.testing.loopback import LoopbackClient
from signalling import protocol
from signalling.errors import TransportClosed
from signalling.lifecycle import SessionLimits
from signalling.session import Session, SessionState
from tests.conftest import GatewayFactory, Ollama, connect
from tests.test_conversation import reply_events, ws_session


class StalledTransport:
    """A client that reads nothing until ``release`` (or is gone, with ``gone``)."""

    kind = "test"

    def __init__(self) -> None:
        self.written: list[str] = []
        self.release = asyncio.Event()
        self.gone = False
        self.closed_with: str | None = None

    async def opened(self) -> None:
        return

    async def write(self, text: str) -> None:
        await self.release.wait()
        if self.gone:
            raise TransportClosed("gone")
        self.written.append(text)

    async def close(self, reason: str) -> None:
        self.closed_with = reason


async def test_a_client_that_does_not_read_keeps_what_ends_a_reply() -> None:
    transport = StalledTransport()
    session = Session("s1", transport)
    dropped: list[str] = []
    session.on_dropped = dropped.append
    session.start(SessionLimits())
    session.send(protocol.reply_started("r1", None))
    for i in range(2000):
        session.send(protocol.reply_delta("r1", f"w{i} "))
    session.send(protocol.reply_done("r1", "whole", {}))
    session.send(protocol.error("llm_timeout", "slow"))

    transport.release.set()
    for _ in range(100):
        if any('"reply.done"' in t for t in transport.written):
            break
        await asyncio.sleep(0.01)
    types = [json.loads(t)["type"] for t in transport.written]
    assert types[0] == "reply.started"
    assert types[-2:] == ["reply.done", "error"]
    assert len(types) <= 257  # the outbox's bound, plus the one the writer held
    assert set(dropped) == {"reply.delta"}
    assert session.dropped["reply.delta"] == len(dropped) >= 1700
    await session.close("client")


async def test_send_never_raises_and_a_gone_client_ends_the_session() -> None:
    transport = StalledTransport()
    transport.gone = True
    transport.release.set()
    session = Session("s1", transport)
    closed: list[str | None] = []
    session.on_closed.append(lambda s: closed.append(s.close_reason))
    session.start(SessionLimits())
    session.send(protocol.pong(1))
    for _ in range(100):
        if session.state is SessionState.CLOSED:
            break
        await asyncio.sleep(0.01)
    assert closed == ["disconnected"]
    assert transport.closed_with == "disconnected"
    session.send(protocol.pong(2))  # after the end: ignored, no error
    assert session.state is SessionState.CLOSED
    assert len(session.tasks) == 0


@pytest.mark.parametrize(
    ("connected", "limits", "reason"),
    [
        (False, SessionLimits(connect_timeout_s=0.2), "connect-timeout"),
        (True, SessionLimits(idle_timeout_s=0.2), "idle"),
        (True, SessionLimits(max_duration_s=0.2, idle_timeout_s=60), "max-duration"),
    ],
)
async def test_session_clocks_end_the_session(
    connected: bool, limits: SessionLimits, reason: str
) -> None:
    transport = StalledTransport()
    session = Session("s1", transport)
    if connected:
        session.set_state(SessionState.CONNECTED)
    session.start(limits)
    if reason == "max-duration":  # activity does not extend the maximum duration
        for _ in range(3):
            await asyncio.sleep(0.1)
            session.touch()
    for _ in range(50):
        if session.state is SessionState.CLOSED:
            break
        await asyncio.sleep(0.05)
    assert session.close_reason == reason


async def test_client_messages_reset_the_idle_clock() -> None:
    session = Session("s1", StalledTransport())
    session.set_state(SessionState.CONNECTED)
    received: list[str | bytes] = []
    session.on_message = received.append
    session.start(SessionLimits(idle_timeout_s=0.3))
    for i in range(6):
        await asyncio.sleep(0.1)
        session.receive(f"m{i}")
    assert session.close_reason is None
    assert len(received) == 6
    await session.close("client")
    session.receive("late")  # after the end: not delivered
    assert len(received) == 6


# --- WebSocket sessions through the real app ---


async def test_ws_idle_timeout_fires_although_heartbeats_flow(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pongs answering the gateway's heartbeat are not activity: before, they reset
    # aiohttp's receive timeout and an idle socket lived for the maximum session time.
    monkeypatch.setattr("gateway.http.ws.HEARTBEAT_S", 0.1)
    client = await gateway(idle_timeout_s=1.0)
    peer = await ws_session(client)
    started = time.monotonic()
    assert (await peer.next("session.ended", within=8))["reason"] == "idle-timeout"
    message = await peer.ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert peer.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert 0.9 <= time.monotonic() - started <= 7
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_sessions_ended_total{reason="idle"} 1.0' in metrics


async def test_ws_sessions_count_against_max_sessions(gateway: GatewayFactory) -> None:
    client = await gateway(max_sessions=1)
    first = await ws_session(client)
    refused = await client.get("/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "session_limit"
    offer = await client.post("/offer", json={"sdp": "v=0", "type": "offer"})
    assert offer.status in (400, 503)  # a bad offer or a full gateway: never a session
    assert len(client.app[SESSIONS]) == 1
    await first.ws.close()
    for _ in range(50):
        if len(client.app[SESSIONS]) == 0:
            break
        await asyncio.sleep(0.05)
    again = await ws_session(client)  # the slot is free again
    await again.ws.close()


async def test_delete_ends_a_ws_session(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = await ws_session(client)
    (session_id,) = [s.id for s in client.app[SESSIONS]._sessions.values()]
    response = await client.delete(f"/sessions/{session_id}")
    assert response.status == 204
    assert (await peer.next("session.ended", within=5))["reason"] == "client"
    message = await peer.ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert len(client.app[SESSIONS]) == 0


async def test_ws_frame_over_the_limit_closes_with_1009(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = await ws_session(client)
    await peer.ws.send_str("x" * (ws.MAX_MESSAGE_BYTES + 1))
    message = await peer.ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert peer.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_ws_message_over_the_protocol_limit_is_an_error_event(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    peer = await ws_session(client)
    await peer.ws.send_str(json.dumps({"type": "text", "text": "x" * protocol.MAX_MESSAGE_BYTES}))
    error = await peer.next("error")
    assert error["code"] == "bad_message"
    await peer.ws.send_str(json.dumps({"type": "ping", "id": 7}))
    assert (await peer.next("pong"))["id"] == 7  # the session goes on


async def test_shutdown_closes_websockets(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = await ws_session(client)
    await client.app.shutdown()
    assert (await peer.next("session.ended", within=5))["reason"] == "shutdown"
    message = await peer.ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert message.data == aiohttp.WSCloseCode.GOING_AWAY
    assert message.extra == "session ended: shutdown"
    assert len(client.app[SESSIONS]) == 0


# --- replies of any size end, on both transports ---

LONG_REPLY = " ".join(f"{i:05d}" + "x" * 94 for i in range(4000))  # 400 KB: over any limit


async def test_a_long_reply_ends_over_ws(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    state.reply = LONG_REPLY
    client = await gateway(ollama_host=url)
    peer = await ws_session(client)
    await peer.ws.send_str("say a lot")
    _, deltas, done = await reply_events(peer)
    assert done["type"] == "reply.done"
    assert "".join(deltas) == LONG_REPLY  # every piece arrived
    assert done["truncated"] is True
    assert LONG_REPLY.startswith(done["text"])
    assert len(protocol.encode(done).encode()) <= protocol.MAX_EVENT_BYTES


async def test_a_long_reply_ends_over_the_data_channel(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.reply = LONG_REPLY
    client = await gateway(ollama_host=url)
    peer, _ = await connect(client)
    try:
        peer.channel.send(json.dumps({"type": "text", "text": "say a lot"}))
        done = await peer.next_event("reply.done", "reply.cancelled", within=20)
        assert done["type"] == "reply.done"
        assert done["truncated"] is True
        assert LONG_REPLY.startswith(done["text"])
        peer.channel.send(json.dumps({"type": "ping", "id": 1}))
        assert (await peer.next_event("pong", within=5))["id"] == 1  # the session goes on
    finally:
        await peer.close()


async def test_a_session_whose_start_fails_leaves_no_trace(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure after registration (a bug, simulated here) ends the session and frees its
    place, over WebRTC and over /ws, instead of holding it until the idle timeout."""
    client = await gateway(max_sessions=1)

    def broken(self: Conversation) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(Conversation, "send_ready", broken)
    peer = LoopbackClient()
    try:
        failed = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
        assert failed.status == 500
        assert (await failed.json())["error"]["code"] == "internal"
    finally:
        await peer.close()
    assert len(client.app[SESSIONS]) == 0
    ws_peer = await client.ws_connect("/ws")
    closing = await ws_peer.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with asyncio.timeout(5):  # the socket closes first, then the session is gone
        while len(client.app[SESSIONS]):  # noqa: ASYNC110 - the gateway's state
            await asyncio.sleep(0.02)
    monkeypatch.undo()
    working = await ws_session(client)  # the one place is free
    await working.ws.close()
