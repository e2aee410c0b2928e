"""Graceful drain (``gateway/http/drain.py``, ``gateway/ops/runner.py``): on SIGTERM no new
session is taken and ``/ready`` turns 503 at once, running replies finish, then every
session hears ``session.ended`` (``shutdown``); a second signal does not wait."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.soak import gateway_process
from gateway.errors import ListenError
from gateway.http.state import DRAIN, SESSIONS
from gateway.ops.runner import start_site
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama
from tests.conftest import GatewayFactory, Ollama
from tests.test_conversation import WsPeer, ws_session

SLOW_REPLY = "one two three four five six seven eight nine ten eleven twelve"


async def test_a_drain_lets_the_reply_finish_then_ends_every_session(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.reply, state.token_interval_s = SLOW_REPLY, 0.1
    client = await gateway(ollama_host=url)
    busy, idle = await ws_session(client), await ws_session(client)
    await busy.ws.send_json({"type": "text", "text": "count to twelve"})
    await busy.next("reply.delta")
    drain = client.app[DRAIN]
    draining = asyncio.create_task(drain.run(client.app[SESSIONS], timeout_s=30))
    await asyncio.sleep(0.05)

    ready = await client.get("/ready")
    assert ready.status == 503
    assert (await ready.json())["checks"]["shutdown"]["ok"] is False
    offerer = LoopbackClient()
    try:
        offer = {"sdp": await offerer.offer(), "type": "offer"}
        refused = await client.post("/offer", json=offer)
    finally:
        await offerer.close()
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "10"
    assert "shutting down" in (await refused.json())["error"]["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/ws")
    assert caught.value.status == 503

    done = await busy.next("reply.done", "reply.cancelled")
    assert done["type"] == "reply.done"
    assert done["text"] == SLOW_REPLY
    for peer in (busy, idle):
        ended = await peer.next("session.ended")
        assert ended["reason"] == "shutdown"
    await asyncio.wait_for(draining, 5)
    assert len(client.app[SESSIONS]) == 0


async def test_hurrying_a_drain_ends_sessions_without_waiting(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.reply, state.token_interval_s = SLOW_REPLY, 0.5  # six seconds of answer
    client = await gateway(ollama_host=url)
    peer = await ws_session(client)
    await peer.ws.send_json({"type": "text", "text": "count to twelve slowly"})
    await peer.next("reply.delta")
    drain = client.app[DRAIN]
    started = time.monotonic()
    draining = asyncio.create_task(drain.run(client.app[SESSIONS], timeout_s=30))
    await asyncio.sleep(0.2)
    drain.hurry()  # the second signal
    ended = await peer.next("session.ended", within=5)
    assert ended["reason"] == "shutdown"
    await asyncio.wait_for(draining, 5)
    assert time.monotonic() - started < 3


async def test_a_drain_times_out_on_a_reply_that_does_not_end(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.mode, state.break_after, state.stall_max_s = "stall", 1, 20
    client = await gateway(ollama_host=url)
    peer = await ws_session(client)
    await peer.ws.send_json({"type": "text", "text": "hello"})
    await peer.next("reply.delta")
    started = time.monotonic()
    await asyncio.wait_for(client.app[DRAIN].run(client.app[SESSIONS], timeout_s=1), 10)
    assert 1 <= time.monotonic() - started < 5
    assert (await peer.next("session.ended"))["reason"] == "shutdown"


# --- the real process and its signals ---


async def test_sigterm_during_a_reply_lets_it_finish_and_exits_cleanly(tmp_path: Path) -> None:
    state = FakeOllama(reply=SLOW_REPLY, token_interval_s=0.15)
    log = tmp_path / "gateway.log"
    async with (
        fake_ollama(state=state) as (_, url),
        gateway_process(url, sessions=1, log_path=log) as (proc, http),
    ):
        peer = WsPeer(await http.ws_connect("/ws"))
        await peer.next("session.ready")
        await peer.ws.send_json({"type": "text", "text": "count to twelve"})
        await peer.next("reply.delta")
        proc.send_signal(signal.SIGTERM)
        for _ in range(40):  # at once, not after the reply
            async with http.get("/ready") as response:
                if response.status == 503:
                    break
            await asyncio.sleep(0.05)
        assert response.status == 503
        done = await peer.next("reply.done", "reply.cancelled")
        assert done["type"] == "reply.done", done
        assert (await peer.next("session.ended"))["reason"] == "shutdown"
        assert await asyncio.wait_for(proc.wait(), 20) == 0, f"see {log}"
    assert "Traceback" not in await asyncio.to_thread(log.read_text)


async def test_an_address_in_use_is_a_readable_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        with pytest.raises(ListenError, match=rf"cannot listen on http://127.0.0.1:{port}/: "):
            await start_site(web.TCPSite(runner, "127.0.0.1", port), f"http://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()
        taken.close()
