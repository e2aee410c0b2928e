"""Network changes: a loopback client whose UDP path disappears (every datagram of its ICE
connection dropped, both ways, nothing closed), for a few seconds or for good.

ICE consent freshness (RFC 7675, aioice ``query_consent``): each side checks every
``CONSENT_INTERVAL`` (5 s, randomised to 4-6 s) with one STUN request that times out after
0.5 s, and gives up after ``CONSENT_FAILURES`` (6) misses in a row: about 20-37 s after the
path went away. A 5 s outage costs at most two misses, so the session survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.state import SESSIONS
from gateway.testing.loopback import load_clips
from tests.conftest import GatewayFactory, connect, peer_connection


async def ended_total(client: TestClient) -> dict[str, float]:  # type: ignore[type-arg]
    """``gateway_sessions_ended_total`` by reason, from /metrics."""
    text = await (await client.get("/metrics")).text()
    pattern = r'^gateway_sessions_ended_total\{reason="([^"]+)"\} ([0-9.e+]+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


async def active_gauge(client: TestClient) -> float:  # type: ignore[type-arg]
    text = await (await client.get("/metrics")).text()
    match = re.search(r"^gateway_sessions_active ([0-9.e+]+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match[1])


@pytest.mark.timeout(60)
async def test_a_five_second_outage_is_survived(gateway: GatewayFactory) -> None:
    client = await gateway()
    registry = client.app[SESSIONS]
    peer, session_id = await connect(client)
    session = registry.get(session_id)
    assert session is not None
    pc = peer_connection(session)

    peer.block_network()
    await asyncio.sleep(5.0)
    peer.unblock_network()

    # The outage was real: 5 s of 20 ms mic frames were dropped. (What the gateway sent,
    # a consent check every 4-6 s and RTCP, may or may not fall in the 5 s.)
    assert peer.blocked_sent > 200, peer.blocked_sent
    assert registry.get(session_id) is session
    assert not session.closing
    assert pc.connectionState == "connected"
    assert peer.pc.connectionState == "connected"

    # The data channel still works (SCTP retransmits what the outage lost)...
    peer.channel.send('{"type": "ping", "id": "x"}')
    assert await peer.next_event("pong", within=10) == {"type": "pong", "id": "x"}
    # ...and so does the voice: speech after the outage is heard and transcribed.
    text, audio = load_clips()[0]
    peer.mic.play(audio)
    final = await peer.next_event("transcript.final", within=20)
    heard = set(re.findall(r"[\w']+", final["text"].lower()))
    said = re.findall(r"[\w']+", text.lower())
    assert sum(w in heard for w in said) >= 0.8 * len(said), final["text"]
    assert registry.get(session_id) is session
    assert await ended_total(client) == {}
    await peer.close()


@pytest.mark.timeout(60)
async def test_a_client_that_vanishes_is_reaped_within_40_s(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await gateway()
    registry = client.app[SESSIONS]
    peer, session_id = await connect(client)
    session = registry.get(session_id)
    assert session is not None
    assert await active_gauge(client) == 1.0

    closed = asyncio.Event()
    session.on_closed.append(lambda _: closed.set())

    peer.block_network()  # for good, without closing anything
    vanished = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed.wait(), 40.0)
    reaped_after = time.monotonic() - vanished
    print(f"vanished client reaped after {reaped_after:.1f} s")

    assert len(registry) == 0, f"still registered after {reaped_after:.1f} s"
    assert 15.0 <= reaped_after < 40.0  # consent freshness, not anything faster
    assert session.closing
    # Consent expiry closes aioice's connection; aiortc's DTLS transport then sees it closed
    # and usually closes the whole peer connection before its ICE transport reports
    # "failed": the reason is then "connection-closed", as for a hang-up.
    reason = session.close_reason
    assert reason in ("connection-closed", "connection-failed"), reason
    assert len(session.tasks) == 0  # its work was cancelled
    assert peer_connection(session).connectionState == "closed"
    assert await active_gauge(client) == 0.0
    assert await ended_total(client) == {reason: 1.0}
    assert f"[{session_id}] closing: {reason}" in caplog.text
    assert "Consent to send expired" in caplog.text  # consent freshness ended it
    assert peer.blocked_received > 0
    await peer.close()
