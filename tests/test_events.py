"""``GET /sessions/<id>/events``: a session's events as Server-Sent Events. The same events
as the data channel with ids, replay with ``Last-Event-ID``, heartbeats, the end, who may
read them (404 for anyone else), bounds, and a reader that stops reading."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http import events
from gateway.http.events import events_path, missed_event, sse_event
from gateway.http.state import SESSIONS
from gateway.testing.loopback import LoopbackClient
from signalling import protocol
from signalling.registry import SessionRegistry
from signalling.session import Session
from signalling.subscribers import QUEUE_LIMIT
from tests.conftest import GatewayFactory, Ollama
from tests.sse import EventStream
from tests.test_conversation import ws_session

KEY_A = "events-test-key-a-0123456789abcdef"
KEY_B = "events-test-key-b-0123456789abcdef"
NUXT = "http://127.0.0.1:3000"


# --- pure ---


def test_an_event_is_its_id_and_one_data_line() -> None:
    assert sse_event('{"type":"pong"}', 7) == 'id: 7\ndata: {"type":"pong"}\n\n'
    assert sse_event("{}") == "data: {}\n\n"
    # A line break (JSON never has one) would start another data line, not a new field.
    assert sse_event("a\nid: 9\r\nb", 1) == "id: 1\ndata: a\ndata: id: 9\ndata: b\n\n"


def test_what_a_reader_that_missed_events_is_told() -> None:
    frame = missed_event(3)
    assert frame.startswith("data: ")
    assert "\nid:" not in frame
    event = json.loads(frame.removeprefix("data: "))
    assert event["type"] == "error"
    assert event["code"] == "events_missed"
    assert event["message"].startswith("3 earlier events")


def test_the_events_url() -> None:
    assert events_path("abc") == "/sessions/abc/events"
    assert events_path("abc", "t0k") == "/sessions/abc/events?token=t0k"


# --- helpers ---


async def open_stream(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    headers: dict[str, str] | None = None,
) -> EventStream:
    response = await client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store, no-transform"
    return EventStream(response)


async def webrtc_session(
    client: TestClient,  # type: ignore[type-arg]
    headers: dict[str, str] | None = None,
) -> tuple[LoopbackClient, dict[str, Any]]:
    peer = LoopbackClient()
    response = await client.post(
        "/offer", json={"sdp": await peer.offer(), "type": "offer"}, headers=headers
    )
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    await peer.accept(answer)
    await peer.next_event("session.ready", within=10)
    return peer, answer


def only_session(client: TestClient) -> Session:  # type: ignore[type-arg]
    registry: SessionRegistry = client.app[SESSIONS]
    (session,) = registry._sessions.values()
    return session


async def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status == status, await response.text()
    body: dict[str, dict[str, str]] = await response.json()
    return body["error"]


# --- through the app ---


async def test_the_stream_carries_what_the_data_channel_carries(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    client = await gateway(ollama_host=ollama[1])
    peer, answer = await webrtc_session(client)
    try:
        stream = await open_stream(
            client, events_path(answer["session_id"], answer["events_token"])
        )
        ready = await stream.next()
        assert (ready.id, ready.type) == (1, "session.ready")  # replayed: it came first
        assert stream.retry_ms == events.RETRY_MS
        peer.channel.send(json.dumps({"type": "text", "text": "What is the weather like?"}))
        channel: list[dict[str, Any]] = []
        while not channel or channel[-1]["type"] != "reply.done":
            channel.append(await peer.next_event(within=20))
        await stream.until("reply.done")
        sse = stream.received[1:]
        assert [e.data for e in sse] == channel
        assert [e.id for e in stream.received] == list(range(1, len(stream.received) + 1))

        assert (await client.delete(f"/sessions/{answer['session_id']}")).status == 204
        rest = await stream.rest()
        assert [e.data for e in rest] == [{"type": "session.ended", "reason": "client"}]
    finally:
        await peer.close()


async def test_last_event_id_resumes_and_an_old_one_says_what_was_missed(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    await ws_session(client)
    session = only_session(client)
    path = events_path(session.id)
    for number in range(10):
        session.send(protocol.pong(number))
    stream = await open_stream(client, path, {"Last-Event-ID": "5"})
    resumed = await stream.next()
    assert resumed.id == 6
    assert resumed.data == {"type": "pong", "id": 4}  # session.ready was event 1
    stream.response.close()

    for number in range(300):  # far more than the log holds
        session.send(protocol.pong(number))
    last = session.events.last_seq
    stream = await open_stream(client, path, {"Last-Event-ID": "5"})
    missed = await stream.next()
    assert missed.id is None
    assert missed.data["code"] == "events_missed"
    held = len(session.events)
    assert missed.data["message"].startswith(f"{last - 5 - held} earlier events")
    first = await stream.next()
    assert first.id == last - held + 1  # the oldest held, then on without gaps
    stream.response.close()

    # A new reader (no Last-Event-ID) gets what is held, and no complaint.
    fresh = await open_stream(client, path)
    assert (await fresh.next()).id == last - held + 1


@pytest.mark.parametrize(
    ("header", "message"),
    [("abc", "Last-Event-ID must be an event number"), ("999", "is not one of this session")],
)
async def test_a_last_event_id_that_is_not_ours_is_400(
    gateway: GatewayFactory, header: str, message: str
) -> None:
    client = await gateway()
    await ws_session(client)
    response = await client.get(
        events_path(only_session(client).id), headers={"Last-Event-ID": header}
    )
    error = await error_of(response, 400)
    assert message in error["message"]


async def test_heartbeats_and_the_end(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.2)
    client = await gateway()
    await ws_session(client)
    session = only_session(client)
    stream = await open_stream(client, events_path(session.id))
    await stream.next()  # session.ready
    with pytest.raises(TimeoutError):
        await stream.next(within=1.0)
    assert stream.comments >= 3
    await session.close("max-duration")
    assert [e.data for e in await stream.rest()] == [
        {"type": "session.ended", "reason": "max-duration"}
    ]
    # Ended: the session is gone, and so are its events.
    error = await error_of(await client.get(events_path(session.id)), 404)
    assert error["code"] == "not_found"


async def test_unknown_sessions_are_404_in_the_contract_shape(gateway: GatewayFactory) -> None:
    client = await gateway()
    error = await error_of(await client.get("/sessions/no-such-session/events"), 404)
    assert error == {"code": "not_found", "message": "no session 'no-such-session'"}


async def test_several_readers_up_to_a_bound(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_SUBSCRIBERS", 2)
    client = await gateway()
    await ws_session(client)
    session = only_session(client)
    path = events_path(session.id)
    readers = [await open_stream(client, path) for _ in range(2)]
    refused = await client.get(path)
    error = await error_of(refused, 429)
    assert "already has 2 event streams" in error["message"]
    assert refused.headers["Retry-After"] == str(events.SUBSCRIBERS_RETRY_AFTER_S)
    session.send(protocol.pong("both"))
    for reader in readers:
        assert (await reader.until("pong")).data["id"] == "both"
    readers[0].response.close()
    for _ in range(100):  # the closed one is noticed at its next write
        session.send(protocol.pong("poke"))
        if session.subscribers < 2:
            break
        await asyncio.sleep(0.05)
    assert (await client.get(path)).status == 200


async def test_a_reader_that_stops_reading_costs_a_bounded_queue_then_its_connection(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "WRITE_TIMEOUT_S", 1.0)
    client = await gateway()
    ws_peer = await ws_session(client)
    session = only_session(client)
    path = events_path(session.id)
    stalled = await client.get(path)  # headers read, the body never
    assert stalled.status == 200
    reading = await open_stream(client, path)
    marker = asyncio.ensure_future(reading.until("pong", within=60))  # reads all along
    piece = "x" * 30_000
    started = time.monotonic()
    for number in range(600):  # 18 MB: more than every socket buffer on the way
        session.send(protocol.reply_delta(f"r{number}", piece))
        if number % 50 == 0:
            await asyncio.sleep(0)
    assert time.monotonic() - started < 5.0  # sending never waited for a reader
    assert max(len(s) for s in session._subscribers) <= QUEUE_LIMIT  # each queue bounded
    # The stalled reader's write times out and its connection is dropped; the other goes on.
    for _ in range(200):
        if session.subscribers == 1:
            break
        await asyncio.sleep(0.05)
    assert session.subscribers == 1
    session.send(protocol.pong("after"))
    assert (await marker).data["id"] == "after"
    # The session itself is unharmed: its own client gets an answer (after what it missed).
    await ws_peer.ws.send_str(json.dumps({"type": "ping", "id": "alive"}))
    while (await ws_peer.next("pong", within=20))["id"] != "alive":
        pass
    stalled.close()


# --- who may read ---


async def auth_gateway(gateway: GatewayFactory, tmp_path: Path) -> TestClient:  # type: ignore[type-arg]
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    return await gateway(auth="api-key", api_keys_file=keys, cors_origins=(NUXT,))


async def test_its_creator_or_its_capability_and_nobody_else(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await auth_gateway(gateway, tmp_path)
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    peer, answer = await webrtc_session(client, a)
    session_id, token = answer["session_id"], answer["events_token"]
    try:
        own = await open_stream(client, events_path(session_id), a)
        assert (await own.next()).type == "session.ready"
        capability = await open_stream(client, events_path(session_id, token))  # no header
        assert (await capability.next()).type == "session.ready"

        unknown = await error_of(await client.get("/sessions/nope/events", headers=b), 404)
        theirs = await error_of(await client.get(events_path(session_id), headers=b), 404)
        # Another principal's session looks exactly like one that does not exist.
        assert theirs == {**unknown, "message": f"no session {session_id!r}"}
        wrong = await client.get(events_path(session_id, "not-the-token"))
        assert (await error_of(wrong, 404))["code"] == "not_found"
        missing = await client.get(events_path(session_id))
        assert (await error_of(missing, 401))["code"] == "unauthorized"
        # The same rule for the session URL: B can neither end it nor learn it exists.
        assert (await client.delete(f"/sessions/{session_id}", headers=b)).status == 404
        assert (await client.get(f"/sessions/{session_id}", headers=b)).status == 404
        assert (await client.get(f"/sessions/{session_id}", headers=a)).status == 204
        assert only_session(client).id == session_id  # unharmed

        # Readable from a front end on an allowed origin.
        cors = await client.get(events_path(session_id, token), headers={"Origin": NUXT})
        assert cors.status == 200
        assert cors.headers["Access-Control-Allow-Origin"] == NUXT
        cors.close()
    finally:
        await peer.close()


async def test_guessing_capabilities_is_rate_limited(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await auth_gateway(gateway, tmp_path)
    peer, answer = await webrtc_session(client, {"Authorization": f"Bearer {KEY_A}"})
    try:
        path = events_path(answer["session_id"], "guess")
        statuses = [(await client.get(path)).status for _ in range(12)]
        assert statuses[:10] == [404] * 10
        assert statuses[-1] == 429
        # The right capability too, while the address is out of attempts.
        right = events_path(answer["session_id"], answer["events_token"])
        assert (await client.get(right)).status == 429
    finally:
        await peer.close()
