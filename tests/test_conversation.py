"""Loopback: turns → the real ``ollama`` client → an Ollama-compatible server → replies
streamed back, over the data channel and over /ws; barge-in; every failure an event."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.conversation.history import INTERRUPTED_MARK
from gateway.testing.loopback import load_clips
from gateway.testing.ollama_server import start_fake_ollama
from tests.conftest import GatewayFactory, Ollama, connect


class WsPeer:
    """A /ws client that reads events with a deadline."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def next(self, *types: str, within: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            message = await self.ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
            assert message.type is aiohttp.WSMsgType.TEXT, message
            event: dict[str, Any] = json.loads(message.data)
            if not types or event["type"] in types:
                return event


async def ws_session(client: TestClient) -> WsPeer:  # type: ignore[type-arg]
    peer = WsPeer(await client.ws_connect("/ws"))
    ready = await peer.next("session.ready")
    assert ready["protocol"] == 1
    return peer


async def reply_events(peer: WsPeer) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    started = await peer.next("reply.started")
    deltas: list[str] = []
    while True:
        event = await peer.next("reply.delta", "reply.done", "reply.cancelled", "error")
        if event["type"] != "reply.delta":
            return started, deltas, event
        assert event["reply_id"] == started["reply_id"]
        deltas.append(event["text"])


async def test_ws_plain_text_streams_the_answer(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url, ollama_temperature=0.2, ollama_num_ctx=4096)
    peer = await ws_session(client)

    await peer.ws.send_str("what time is it")
    started, deltas, done = await reply_events(peer)

    assert started["utterance_id"] is None
    assert done["type"] == "reply.done"
    assert "".join(deltas) == done["text"] == "You said: what time is it. That is all."
    assert len(deltas) == 9  # word by word, as Ollama streams them
    assert set(done["timings"]) == {
        "llm_first_token_ms",
        "llm_total_ms",
        "speech_end_to_first_token_ms",
        "endpoint_to_first_token_ms",
    }
    sent = state.requests[-1]
    assert sent["model"] == "llama3.2"
    assert sent["keep_alive"] == "30m"
    assert sent["options"] == {"temperature": 0.2, "num_ctx": 4096}
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == {"role": "user", "content": "what time is it"}


async def test_ws_json_messages_history_and_prompt(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url, history_turns=1)
    peer = await ws_session(client)

    await peer.ws.send_json({"type": "text", "text": "first"})
    await reply_events(peer)
    await peer.ws.send_json({"type": "session.update", "system_prompt": "Be a pirate."})
    await peer.ws.send_json({"type": "text", "text": "second"})
    await reply_events(peer)
    messages = state.requests[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "Be a pirate."}
    assert [m["content"] for m in messages[1:]] == [
        "first",
        "You said: first. That is all.",
        "second",
    ]

    await peer.ws.send_json({"type": "history.clear"})
    await peer.ws.send_json({"type": "text", "text": "third"})
    await reply_events(peer)
    assert [m["role"] for m in state.requests[-1]["messages"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("frame", "phrase"),
    [
        ('{"type": "nope"}', "unknown message type"),
        ('{"type": "text"}', '"text" must be a non-empty string'),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "text", "text": "' + "x" * 20_000 + '"}', "exceeds"),
    ],
)
async def test_ws_bad_messages_are_errors_and_the_session_goes_on(
    gateway: GatewayFactory, ollama: Ollama, frame: str, phrase: str
) -> None:
    client = await gateway(ollama_host=ollama[1])
    peer = await ws_session(client)
    await peer.ws.send_str(frame)
    error = await peer.next("error")
    assert error["code"] == "bad_message"
    assert phrase in error["message"]
    await peer.ws.send_json({"type": "ping", "id": 7})
    assert await peer.next("pong") == {"type": "pong", "id": 7}


async def test_cancel_stops_the_reply_and_keeps_the_part_said(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.token_interval_s = 0.2
    client = await gateway(ollama_host=url)
    peer = await ws_session(client)

    await peer.ws.send_json({"type": "text", "text": "tell me a long story"})
    started = await peer.next("reply.started")
    first = await peer.next("reply.delta")
    await peer.ws.send_json({"type": "cancel"})
    cancelled = await peer.next("reply.cancelled", "reply.done")

    assert cancelled == {
        "type": "reply.cancelled",
        "reply_id": started["reply_id"],
        "reason": "client",
    }
    await peer.ws.send_json({"type": "text", "text": "next"})
    await reply_events(peer)
    said = state.requests[-1]["messages"][2]
    assert said["role"] == "assistant"
    assert said["content"].startswith(first["text"])
    assert said["content"].endswith(INTERRUPTED_MARK)
    for _ in range(50):  # the gateway hung up on Ollama: the stream is not left running
        if state.active_streams == 0:
            break
        await asyncio.sleep(0.05)
    assert state.active_streams == 0


async def test_ollama_down_then_back(gateway: GatewayFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await gateway(ollama_host=f"http://127.0.0.1:{port}")
    peer = await ws_session(client)

    began = time.monotonic()
    await peer.ws.send_str("hello?")
    started, deltas, end = await reply_events(peer)
    error = await peer.next("error")
    assert time.monotonic() - began < 2.0
    assert end == {"type": "reply.cancelled", "reply_id": started["reply_id"], "reason": "error"}
    assert deltas == []
    assert error["code"] == "llm_unavailable"
    assert error["retryable"] is True
    assert "ollama serve" in error["message"]

    _state, _url, stop = await start_fake_ollama(port=port)
    try:
        await peer.ws.send_str("hello again")
        _, _, done = await reply_events(peer)
        assert done["type"] == "reply.done"
    finally:
        await stop()


async def test_model_missing_says_how_to_pull(gateway: GatewayFactory, ollama: Ollama) -> None:
    client = await gateway(ollama_host=ollama[1], ollama_model="qwen3:8b")
    peer = await ws_session(client)
    await peer.ws.send_str("hi")
    await reply_events(peer)
    error = await peer.next("error")
    assert error["code"] == "llm_model_missing"
    assert "ollama pull qwen3:8b" in error["message"]
    assert error["retryable"] is False


async def test_stream_breaking_mid_answer(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    state.mode = "break"
    state.break_after = 3
    client = await gateway(ollama_host=url)
    peer = await ws_session(client)
    await peer.ws.send_str("hi")
    _, deltas, end = await reply_events(peer)
    error = await peer.next("error")
    assert len(deltas) == 3
    assert end["reason"] == "error"
    assert error["code"] == "llm_stream_broken"

    state.mode = "normal"  # the session goes on
    await peer.ws.send_str("again")
    assert (await reply_events(peer))[2]["type"] == "reply.done"


async def test_slow_ollama_hits_the_first_token_timeout(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.mode = "stall"
    state.break_after = 0
    client = await gateway(ollama_host=url, llm_first_token_timeout=1.0)
    peer = await ws_session(client)
    began = time.monotonic()
    await peer.ws.send_str("hi")
    _, _, end = await reply_events(peer)
    error = await peer.next("error")
    assert 1.0 <= time.monotonic() - began < 3.0
    assert end["reason"] == "error"
    assert error["code"] == "llm_timeout"


async def test_slow_ollama_hits_the_total_timeout(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    state.token_interval_s = 0.5
    client = await gateway(ollama_host=url, llm_timeout=1.0)
    peer = await ws_session(client)
    await peer.ws.send_str("a question with a long answer please")
    _, deltas, end = await reply_events(peer)
    error = await peer.next("error")
    assert 1 <= len(deltas) < 8
    assert end["reason"] == "error"
    assert error["code"] == "llm_timeout"
    assert "whole answer" in error["message"]


async def test_speech_is_answered_on_the_data_channel(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url)
    peer, _ = await connect(client)
    _, audio = load_clips()[2]
    peer.mic.play(audio)

    final = await peer.next_event("transcript.final")
    started = await peer.next_event("reply.started")
    deltas = []
    while (event := await peer.next_event("reply.delta", "reply.done"))["type"] == "reply.delta":
        deltas.append(event["text"])

    assert started["utterance_id"] == final["utterance_id"]
    assert event["text"] == "".join(deltas) == f"You said: {final['text']}. That is all."
    assert event["timings"]["endpoint_to_first_token_ms"] >= event["timings"]["llm_first_token_ms"]
    assert state.requests[-1]["messages"][-1]["content"] == final["text"]
    await peer.close()


async def test_barge_in_cancels_the_reply(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    state.token_interval_s = 0.3  # a reply still streaming when the person speaks
    client = await gateway(ollama_host=url)
    peer, _ = await connect(client)

    peer.channel.send(json.dumps({"type": "text", "text": "tell me everything about Paris"}))
    started = await peer.next_event("reply.started")
    await peer.next_event("reply.delta")
    _, audio = load_clips()[0]
    peer.mic.play(audio)
    speech = await peer.next_event("speech.started")
    cancelled = await peer.next_event("reply.cancelled", "reply.done")

    assert cancelled == {
        "type": "reply.cancelled",
        "reply_id": started["reply_id"],
        "reason": "barge-in",
    }
    final = await peer.next_event("transcript.final")
    assert final["utterance_id"] == speech["utterance_id"]
    new = await peer.next_event("reply.started")
    assert new["utterance_id"] == final["utterance_id"]
    await peer.close()


async def test_data_channel_bad_messages(gateway: GatewayFactory, ollama: Ollama) -> None:
    client = await gateway(ollama_host=ollama[1])
    peer, _ = await connect(client)
    for bad in ("not json", '{"type": 5}', json.dumps({"type": "text", "text": "x" * 20_000})):
        peer.channel.send(bad)
        assert (await peer.next_event("error"))["code"] == "bad_message"
    peer.channel.send(json.dumps({"type": "ping", "id": "a"}))
    assert (await peer.next_event("pong"))["id"] == "a"
    await peer.close()


@pytest.mark.skipif(
    not os.environ.get("GATEWAY_TEST_OLLAMA_HOST"),
    reason="set GATEWAY_TEST_OLLAMA_HOST (and GATEWAY_TEST_OLLAMA_MODEL) to test a real Ollama",
)
async def test_real_ollama(gateway: GatewayFactory) -> None:
    client = await gateway(
        ollama_host=os.environ["GATEWAY_TEST_OLLAMA_HOST"],
        ollama_model=os.environ.get("GATEWAY_TEST_OLLAMA_MODEL", "llama3.2"),
        allow_remote_ollama=True,  # the test host may be another machine
        llm_first_token_timeout=120.0,
    )
    peer = await ws_session(client)
    await peer.ws.send_str("Say the word hello and nothing else.")
    _, deltas, done = await reply_events(peer)
    assert done["type"] == "reply.done", done
    assert "hello" in done["text"].lower()
    assert "".join(deltas) == done["text"]
