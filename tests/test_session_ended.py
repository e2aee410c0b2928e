"""``session.ended``: every session the gateway ends says why first, on every transport, and
it reaches the client; a client that is gone is not written to; shutdown tells everyone at
once. The session core with test transports, then the real app with a real aiortc peer and
a real WebSocket, then the built-in page in Chromium (whether it comes back)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import expect

from gateway.http.state import SESSIONS
from gateway.testing.loopback import LoopbackClient
from signalling import protocol
from signalling.lifecycle import SessionLimits
from signalling.registry import SessionRegistry
from signalling.session import ENDED_FLUSH_TIMEOUT_S, Session, SessionState
from tests.browser import chromium, requires_chromium, watch_console
from tests.conftest import GatewayFactory, Ollama, connect
from tests.test_conversation import WsPeer, ws_session

# The gateway's own reason → what the client is told.
REASONS = [
    ("deleted", "client"),
    ("idle", "idle-timeout"),
    ("max-duration", "max-duration"),
    ("shutdown", "shutdown"),
    ("worker-lost", "worker-lost"),
    ("error", "error"),
]


class Recorder:
    """A transport that records what it was asked to do, in order; ``stall`` makes every
    write wait (a client that reads nothing), ``never_opens`` a channel that never opens."""

    kind = "test"

    def __init__(self, *, stall: bool = False, never_opens: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._stall = stall
        self._never_opens = never_opens

    async def opened(self) -> None:
        if self._never_opens:
            await asyncio.Event().wait()

    async def write(self, text: str) -> None:
        if self._stall:
            await asyncio.Event().wait()
        self.calls.append(("write", json.loads(text)))

    async def close(self, reason: str) -> None:
        self.calls.append(("close", reason))

    @property
    def written(self) -> list[dict[str, Any]]:
        return [event for call, event in self.calls if call == "write"]


async def started(transport: Recorder) -> Session:
    session = Session("s1", transport)
    session.start(SessionLimits())
    await asyncio.sleep(0)  # the writer is past opened()
    return session


# --- the session core ---


async def test_ended_is_the_last_write_before_the_transport_closes() -> None:
    transport = Recorder()
    session = await started(transport)
    session.send(protocol.reply_started("r1", None))
    session.send(protocol.reply_done("r1", "hello", {}))
    await session.close("deleted")
    assert [call for call, _ in transport.calls] == ["write", "write", "write", "close"]
    assert transport.written[-1] == {"type": "session.ended", "reason": "client"}
    assert [e["type"] for e in transport.written[:2]] == ["reply.started", "reply.done"]
    assert (session.close_reason, session.ended_reason) == ("deleted", "client")
    session.send(protocol.pong(1))  # after the end: nothing more, no error
    assert len(transport.written) == 3


@pytest.mark.parametrize("reason", ["disconnected", "connection-failed", "connection-closed"])
async def test_a_client_that_is_gone_is_not_written_to(reason: str) -> None:
    transport = Recorder()
    session = await started(transport)
    subscription, _ = session.subscribe()
    await session.close(reason)
    assert transport.written == []
    assert transport.calls == [("close", reason)]
    # A reader of its events (Server-Sent Events) is still told.
    last = None
    while (item := await subscription.next(0.1)) is not None:
        last = json.loads(item.text)
    told = "error" if reason == "connection-failed" else "client"
    assert last == {"type": "session.ended", "reason": told}


async def test_a_client_that_does_not_read_holds_the_close_up_one_second_at_most() -> None:
    transport = Recorder(stall=True)
    session = await started(transport)
    session.send(protocol.pong(1))
    before = time.monotonic()
    await session.close("shutdown")
    waited = time.monotonic() - before
    assert ENDED_FLUSH_TIMEOUT_S - 0.1 <= waited <= ENDED_FLUSH_TIMEOUT_S + 1.0
    assert transport.calls == [("close", "shutdown")]  # closed anyway
    assert session.state is SessionState.CLOSED


async def test_a_channel_that_never_opened_is_not_waited_for() -> None:
    transport = Recorder(never_opens=True)
    session = await started(transport)
    before = time.monotonic()
    await session.close("connect-timeout")
    assert time.monotonic() - before < 0.5
    assert transport.calls == [("close", "connect-timeout")]
    assert session.ended_reason == "error"


async def test_without_a_transport_for_events_subscribers_get_them_all() -> None:
    transport = Recorder()
    session = Session("s1", transport)
    session.transport_events = False  # a WHIP publisher without a data channel
    session.start(SessionLimits())
    subscription, missed = session.subscribe()
    session.send(protocol.transcript_final("u1", "hello", {}))
    await session.close("deleted")
    types = []
    while (item := await subscription.next(0.1)) is not None:
        types.append(item.type)
    assert (types, missed) == (["transcript.final", "session.ended"], 0)
    assert transport.written == []


async def test_shutdown_tells_every_session_at_once() -> None:
    registry = SessionRegistry(max_sessions=100)
    reading = [Recorder() for _ in range(20)]
    stalled = [Recorder(stall=True) for _ in range(20)]
    sessions = []
    for number, transport in enumerate(reading + stalled):
        session = Session(f"s{number}", transport)
        session.start(SessionLimits())
        registry.add(session)
        sessions.append(session)
    await asyncio.sleep(0)
    before = time.monotonic()
    await registry.close_all("shutdown")
    # Concurrent: forty sessions, half of them stalled, cost one flush timeout, not forty.
    assert time.monotonic() - before < ENDED_FLUSH_TIMEOUT_S + 1.5
    for transport in reading:
        assert transport.written == [{"type": "session.ended", "reason": "shutdown"}]
    assert all(s.state is SessionState.CLOSED for s in sessions)


# --- through the app: a real aiortc peer on the data channel ---


async def ended_over_channel(peer: LoopbackClient) -> dict[str, Any]:
    """session.ended, checked to be the last event the channel carries."""
    ended = await peer.next_event("session.ended", within=10)
    assert await peer.collect(0.3) == []
    return ended


@pytest.mark.parametrize(("internal", "public"), REASONS)
async def test_each_reason_reaches_a_webrtc_client(
    gateway: GatewayFactory, internal: str, public: str
) -> None:
    client = await gateway()
    peer, session_id = await connect(client)
    try:
        await client.app[SESSIONS].get(session_id).close(internal)
        assert await ended_over_channel(peer) == {"type": "session.ended", "reason": public}
        assert client.app[SESSIONS].find(session_id) is None
    finally:
        await peer.close()
    metrics = await (await client.get("/metrics")).text()
    assert f'gateway_sessions_ended_total{{reason="{internal}"}} 1.0' in metrics


async def test_delete_by_the_client_is_client(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer, session_id = await connect(client)
    try:
        response = await client.delete(f"/sessions/{session_id}")
        assert response.status == 204
        assert (await ended_over_channel(peer))["reason"] == "client"
    finally:
        await peer.close()


async def test_the_idle_clock_says_idle_timeout(gateway: GatewayFactory) -> None:
    client = await gateway(idle_timeout_s=1.0)
    peer, _ = await connect(client)
    try:
        assert (await ended_over_channel(peer))["reason"] == "idle-timeout"
    finally:
        await peer.close()


async def test_the_duration_limit_says_max_duration(gateway: GatewayFactory) -> None:
    client = await gateway(max_session_s=4, idle_timeout_s=60)
    peer, _ = await connect(client)
    try:
        assert (await ended_over_channel(peer))["reason"] == "max-duration"
    finally:
        await peer.close()


async def test_a_client_that_left_is_not_written_to(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer, session_id = await connect(client)
    session = client.app[SESSIONS].get(session_id)
    await peer.close()
    for _ in range(100):
        if session.state is SessionState.CLOSED:
            break
        await asyncio.sleep(0.05)
    assert session.close_reason in ("connection-closed", "connection-failed", "disconnected")
    assert session.events.replay(0).entries[-1].type == "session.ended"  # its readers are told


# --- through the app: /ws ---


async def ended_over_ws(peer: WsPeer) -> dict[str, Any]:
    ended = await peer.next("session.ended")
    message = await peer.ws.receive(timeout=5)  # and then the socket closes
    assert message.type is aiohttp.WSMsgType.CLOSE, message
    return ended


@pytest.mark.parametrize(("internal", "public"), REASONS)
async def test_each_reason_reaches_a_websocket_client(
    gateway: GatewayFactory, internal: str, public: str
) -> None:
    client = await gateway()
    peer = await ws_session(client)
    (session,) = client.app[SESSIONS]._sessions.values()
    await session.close(internal)
    assert await ended_over_ws(peer) == {"type": "session.ended", "reason": public}


async def test_ws_delete_idle_and_duration(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = await ws_session(client)
    (session,) = client.app[SESSIONS]._sessions.values()
    assert (await client.delete(f"/sessions/{session.id}")).status == 204
    assert (await ended_over_ws(peer))["reason"] == "client"

    idle = await gateway(idle_timeout_s=1.0)
    peer = await ws_session(idle)
    assert (await ended_over_ws(peer))["reason"] == "idle-timeout"

    limited = await gateway(max_session_s=1, idle_timeout_s=60)
    peer = await ws_session(limited)
    assert (await ended_over_ws(peer))["reason"] == "max-duration"


async def test_app_cleanup_says_shutdown_to_every_transport(gateway: GatewayFactory) -> None:
    client = await gateway()
    peers = [await connect(client) for _ in range(2)]
    ws_peers = [await ws_session(client) for _ in range(2)]
    # The server's shutdown (the app's close_all("shutdown")), the client's sockets left open.
    closing = asyncio.ensure_future(client.server.close())
    try:
        for ws_peer in ws_peers:
            assert (await ended_over_ws(ws_peer))["reason"] == "shutdown"
        for peer, _ in peers:
            ended = await peer.next_event("session.ended", within=10)
            assert ended["reason"] == "shutdown"
        await asyncio.wait_for(closing, 15)
    finally:
        for peer, _ in peers:
            await peer.close()


# --- the built-in page ---


async def wait_for_session(
    client: TestClient,  # type: ignore[type-arg]
    other_than: str | None = None,
) -> Session:
    registry: SessionRegistry = client.app[SESSIONS]
    for _ in range(200):
        sessions = [s for s in registry._sessions.values() if s.id != other_than]
        if sessions and sessions[0].state is SessionState.CONNECTED:
            return sessions[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no connected session")


@requires_chromium
async def test_the_page_says_why_and_comes_back_only_when_it_makes_sense(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    client = await gateway(ollama_host=ollama[1])
    async with chromium(tmp_path, microphone="absent") as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(str(client.make_url("/")))
        connection = page.locator("#connection")

        # Idle timeout: said, and the page stays closed.
        await page.locator("#text").fill("hello there")
        await page.locator("#send").click()
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        session = await wait_for_session(client)
        await session.close("idle")
        await expect(connection).to_have_attribute("data-ended", "idle-timeout")
        await expect(connection).to_have_attribute("data-state", "closed")
        await expect(page.locator("#problem-text")).to_contain_text("nothing was said")
        await asyncio.sleep(2.0)  # longer than the first back-off
        assert len(client.app[SESSIONS]) == 0
        await expect(connection).to_have_attribute("data-state", "closed")

        # Shutdown (a restart): said, and the page comes back by itself.
        await page.locator("#text").fill("hello again")
        await page.locator("#send").click()
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        first = await wait_for_session(client)
        await first.close("shutdown")
        await expect(connection).to_have_attribute("data-ended", "shutdown")
        await expect(page.locator("#connection-text")).to_contain_text("Gateway restarting")
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        second = await wait_for_session(client, other_than=first.id)
        assert second.id != first.id
        assert problems == []
