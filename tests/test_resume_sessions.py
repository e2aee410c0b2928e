"""Resumable conversations end to end: a real aiortc peer reconnects with the token from
``session.ready`` and the real ``ollama`` client sends the earlier exchange again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.http.state import SESSIONS
from gateway.testing.loopback import LoopbackClient
from tests.conftest import GatewayFactory, Ollama


async def _open(
    client: TestClient,  # type: ignore[type-arg]
    session: dict[str, Any] | None = None,
) -> tuple[LoopbackClient, dict[str, Any]]:
    peer = LoopbackClient()
    body: dict[str, Any] = {"sdp": await peer.offer(), "type": "offer"}
    if session is not None:
        body["session"] = session
    response = await client.post("/offer", json=body)
    assert response.status == 200, await response.text()
    await peer.accept(await response.json())
    return peer, await peer.next_event("session.ready", within=10)


async def _ask(peer: LoopbackClient, text: str) -> None:
    peer.channel.send(json.dumps({"type": "text", "text": text}))
    done = await peer.next_event("reply.done", "reply.cancelled", "error", within=20)
    assert done["type"] == "reply.done", done


def _user_turns(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_a_reconnect_with_the_token_continues_the_conversation(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url)
    peer, ready = await _open(client)
    try:
        token = ready["conversation"]
        await _ask(peer, "My name is Ada.")
        deleted = await client.delete(f"/sessions/{ready['session_id']}")
        assert deleted.status == 204
    finally:
        await peer.close()
    again, resumed = await _open(client, {"conversation": token})
    try:
        assert resumed["session_id"] != ready["session_id"]
        assert isinstance(resumed["conversation"], str)
        await _ask(again, "What is my name?")
        last = state.requests[-1]
        assert _user_turns(last) == ["My name is Ada.", "What is my name?"]
        assert {"role": "assistant", "content": "You said: My name is Ada.. That is all."} in (
            last["messages"]
        )
    finally:
        await again.close()


async def test_a_client_back_before_its_old_session_ended_takes_it_over(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    """The usual reconnect: the network dropped, the page reconnects at once, and the old
    session is still waiting for ICE to give up on it."""
    state, url = ollama
    client = await gateway(ollama_host=url)
    old, ready = await _open(client)
    new: LoopbackClient | None = None
    try:
        await _ask(old, "Remember the number seven.")
        new, resumed = await _open(client, {"conversation": ready["conversation"]})
        sessions = client.app[SESSIONS]
        for _ in range(50):
            if len(sessions) == 1:
                break
            await asyncio.sleep(0.1)
        sessions.get(resumed["session_id"])  # the new one lives, the old one has ended
        assert len(sessions) == 1
        await _ask(new, "Which number?")
        assert _user_turns(state.requests[-1]) == ["Remember the number seven.", "Which number?"]
        # The old session ended after the new one took over: what is kept for the next
        # reconnect is the new one's history, not the old one's.
        deleted = await client.delete(f"/sessions/{resumed['session_id']}")
        assert deleted.status == 204
        await new.close()
        new, _ = await _open(client, {"conversation": resumed["conversation"]})
        await _ask(new, "And the one after?")
        assert _user_turns(state.requests[-1]) == [
            "Remember the number seven.",
            "Which number?",
            "And the one after?",
        ]
    finally:
        await old.close()
        if new is not None:
            await new.close()


async def test_a_forged_token_starts_afresh_with_an_error_and_the_session_goes_on(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url)
    peer, ready = await _open(client, {"conversation": "eyJhbGciOiJub25lIn0.e30."})
    try:
        error = await peer.next_event("error", within=5)
        assert error["code"] == "resume_invalid"
        await _ask(peer, "Hello?")
        assert _user_turns(state.requests[-1]) == ["Hello?"]
        # Only an opening session may name a conversation.
        update = {"type": "session.update", "conversation": ready["conversation"]}
        peer.channel.send(json.dumps(update))
        refused = await peer.next_event("error", within=5)
        assert "conversation" in refused["message"]
    finally:
        await peer.close()


async def test_a_conversation_past_its_window_starts_afresh(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url, resume_window_s=1)
    peer, ready = await _open(client)
    try:
        await _ask(peer, "My name is Ada.")
    finally:
        await peer.close()  # the gateway notices the peer left and ends the session
    sessions = client.app[SESSIONS]
    for _ in range(50):
        if not len(sessions):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.2)
    late, _ = await _open(client, {"conversation": ready["conversation"]})
    try:
        error = await late.next_event("error", within=5)
        assert error["code"] == "resume_expired"
        await _ask(late, "Hello?")
        assert _user_turns(state.requests[-1]) == ["Hello?"]
    finally:
        await late.close()


async def test_a_malformed_token_in_an_offer_is_a_400(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = LoopbackClient()
    try:
        for bad in (7, "", "x" * 2000):
            body = {"sdp": await peer.offer(), "type": "offer", "session": {"conversation": bad}}
            response = await client.post("/offer", json=body)
            assert response.status == 400
            assert "session.conversation" in (await response.json())["error"]["message"]
    finally:
        await peer.close()


async def test_with_no_resume_window_no_token_is_handed_out(gateway: GatewayFactory) -> None:
    client = await gateway(resume_window_s=0)
    peer, ready = await _open(client)
    try:
        assert "conversation" not in ready
    finally:
        await peer.close()
