"""Spoken replies end to end: a real aiortc client hears the reply on the gateway's audio
track (Piper's voice, Opus over DTLS-SRTP), Whisper understands what it heard, speaking
over it cuts it off, and the gateway's own voice fed back into the microphone neither
interrupts it nor becomes a transcript."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from gateway.http.app import WARM_UP_TEXT
from gateway.testing.loopback import LoopbackClient, load_clips
from gateway.testing.speech_server import speech_server
from media import Float32Array
from tests.conftest import EngineCache, GatewayFactory, Ollama, connect

ANSWER = (
    "The weather in Paris is mild today, around fifteen degrees. "
    "Take a light coat if you go out this evening."
)
LONG_ANSWER = " ".join(
    [
        "Paris has many museums worth a visit, and the Louvre is the largest of them.",
        "The Orsay museum holds impressionist paintings in an old railway station.",
        "The Pompidou centre shows modern art behind its colourful pipes.",
        "Smaller museums are quieter, and some of them are free on Sundays.",
    ]
)


def to_16k(audio_48k: Float32Array) -> Float32Array:
    # The reply track is band-limited speech: averaging each 3 samples is a fine low-pass
    # for Whisper's purposes.
    usable = len(audio_48k) // 3 * 3
    out: Float32Array = audio_48k[:usable].reshape(-1, 3).mean(axis=1).astype(np.float32)
    return out


def wer(reference: str, hypothesis: str) -> float:
    def norm(text: str) -> str:
        return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())

    return float(jiwer.wer(norm(reference), norm(hypothesis)))


async def gather(peer: LoopbackClient, *types: str, within: float = 30.0) -> dict[str, Any]:
    """The first event of each of ``types``, in whatever order they come (a short reply's
    text ends before its voice begins)."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + within
    while len(found) < len(types):
        event = await peer.next_event(*types, within=max(0.01, deadline - time.monotonic()))
        found.setdefault(event["type"], event)
    return found


async def ask(peer: LoopbackClient, text: str) -> None:
    await asyncio.wait_for(peer.opened.wait(), 10)
    peer.channel.send(json.dumps({"type": "text", "text": text}))


async def spoken_session(
    gateway: GatewayFactory,
    ollama: Ollama,
    reply: str,
    *,
    echo_cancellation: bool = True,
    **config: Any,
) -> tuple[TestClient, LoopbackClient, dict[str, Any]]:  # type: ignore[type-arg]
    """``echo_cancellation``: what the client says of its microphone; the loopback client
    hears no echo unless ``feed_back_echo`` (a speaker without the browser's canceller)."""
    state, url = ollama
    state.reply = reply
    client = await gateway(speak=True, ollama_host=url, **config)
    peer = LoopbackClient()
    offer = {
        "sdp": await peer.offer(),
        "type": "offer",
        "session": {"echo_cancellation": echo_cancellation},
    }
    response = await client.post("/offer", json=offer)
    assert response.status == 200, await response.text()
    await peer.accept(await response.json())
    ready = await peer.next_event("session.ready", within=10)
    return client, peer, ready


async def test_the_reply_is_heard_and_whisper_understands_it(
    gateway: GatewayFactory, ollama: Ollama, engines: EngineCache
) -> None:
    _, peer, ready = await spoken_session(gateway, ollama, ANSWER)
    try:
        assert ready["tts"] == {"enabled": True, "engine": "piper", "voice": "en_US-joe-medium"}
        asked = time.monotonic()
        await ask(peer, "what is the weather in Paris")
        events = await gather(peer, "reply.audio.started", "reply.done", "reply.audio.done")
        started, done, finished = (
            events["reply.audio.started"],
            events["reply.done"],
            events["reply.audio.done"],
        )
        assert started["timings"]["tts_first_audio_ms"] > 0
        assert started["timings"]["endpoint_to_first_audio_ms"] > 0
        assert finished == {
            "type": "reply.audio.done",
            "reply_id": done["reply_id"],
            "interrupted": False,
        }
        await asyncio.sleep(0.3)  # the last frames are on their way
        heard = to_16k(peer.heard.since(asked))
        assert heard.size > 16_000 * 3  # seconds of speech, not a click
        first = peer.heard.first_loud(asked)
        assert first is not None
        text = engines.get("openai-whisper").transcribe(heard, "en").text
        assert wer(ANSWER, text) <= 0.15, text
    finally:
        await peer.close()


async def test_speaking_over_the_reply_cuts_it_off(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, _ = ollama
    client, peer, _ = await spoken_session(gateway, ollama, LONG_ANSWER)
    try:
        await ask(peer, "tell me about museums")
        await peer.next_event("reply.audio.started", within=20)
        await asyncio.sleep(1.0)  # let it speak a sentence
        _, audio = load_clips()[0]
        peer.mic.play(audio)
        cut = await peer.next_event("reply.audio.done", within=20)
        assert cut["interrupted"] is True
        silenced = time.monotonic()
        await peer.next_event("transcript.final", within=20)
        last = peer.heard.last_loud()
        assert last is not None
        # The voice stopped at once: nothing loud arrived after the cut (plus the jitter
        # buffer and a frame in flight).
        assert last <= silenced + 0.15
        # The next question's history holds only what was heard, marked as interrupted.
        await peer.next_event("reply.started", within=10)
        for _ in range(100):
            if len(state.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        answer = [m for m in state.requests[-1]["messages"] if m["role"] == "assistant"][-1]
        assert answer["content"].endswith("[interrupted by the user]")
        said = answer["content"].removesuffix(" [interrupted by the user]")
        assert LONG_ANSWER.startswith(said[:40])
        assert len(said) < len(LONG_ANSWER)
        metrics = await (await client.get("/metrics")).text()
        assert 'gateway_replies_spoken_total{outcome="cut"} 1.0' in metrics
    finally:
        await peer.close()


async def test_its_own_voice_in_the_microphone_neither_interrupts_nor_is_transcribed(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    _, peer, _ = await spoken_session(gateway, ollama, LONG_ANSWER, echo_cancellation=False)
    try:
        peer.feed_back_echo(gain_db=-20.0, delay_ms=40.0)  # a laptop speaker, no canceller
        await ask(peer, "tell me about museums")
        finished = await peer.next_event("reply.audio.done", within=60)
        assert finished["interrupted"] is False
        events = await peer.collect(1.0)  # the echo's tail
        seen = {e["type"] for _, e in peer.received}
        assert "speech.started" not in seen, [e for e in events if e["type"].startswith("speech")]
        assert "transcript.final" not in seen
        assert "reply.cancelled" not in seen
    finally:
        await peer.close()


async def test_a_person_still_interrupts_over_the_echo(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    _, peer, _ = await spoken_session(gateway, ollama, LONG_ANSWER, echo_cancellation=False)
    try:
        peer.feed_back_echo(gain_db=-20.0, delay_ms=40.0)
        await ask(peer, "tell me about museums")
        await peer.next_event("reply.audio.started", within=20)
        await asyncio.sleep(3.0)
        _, audio = load_clips()[0]
        peer.mic.play(audio)  # double talk: the person over the gateway's echo
        cut = await peer.next_event("reply.audio.done", within=20)
        assert cut["interrupted"] is True
        final = await peer.next_event("transcript.final", within=20)
        said = final["text"].lower()
        assert "weather" in said, said  # the person's words ("What is the weather like...")
        assert not {"museum", "museums", "louvre", "orsay"} & set(said.split()), said
    finally:
        await peer.close()


async def test_a_client_that_only_sends_gets_text_and_is_told(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    state, url = ollama
    state.reply = ANSWER
    client = await gateway(speak=True, ollama_host=url)
    peer = LoopbackClient()
    for transceiver in peer.pc.getTransceivers():
        transceiver.direction = "sendonly"
    try:
        response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
        assert response.status == 200
        answer = await response.json()
        assert "a=recvonly" in answer["sdp"]
        await peer.accept(answer)
        ready = await peer.next_event("session.ready", within=10)
        assert ready["tts"] == {"enabled": False, "engine": None, "voice": None} or ready[
            "tts"
        ] == {"enabled": False}
        peer.channel.send(json.dumps({"type": "session.update", "tts": True}))
        error = await peer.next_event("error", within=5)
        assert error["code"] == "not_supported"
        assert "only sends" in error["message"]
        await ask(peer, "weather?")
        done = await peer.next_event("reply.done", within=20)
        assert done["text"] == ANSWER
    finally:
        await peer.close()


async def test_session_update_turns_speech_off_and_on(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    _, peer, _ = await spoken_session(gateway, ollama, ANSWER)
    try:
        peer.channel.send(json.dumps({"type": "session.update", "tts": False}))
        await ask(peer, "weather?")
        await peer.next_event("reply.done", within=20)
        await peer.collect(1.0)
        assert "reply.audio.started" not in {e["type"] for _, e in peer.received}
        peer.channel.send(json.dumps({"type": "session.update", "tts": True}))
        await ask(peer, "and tomorrow?")
        await peer.next_event("reply.audio.started", within=20)
    finally:
        await peer.close()


@pytest.mark.parametrize("reason", ["client"])
async def test_cancel_stops_the_voice(gateway: GatewayFactory, ollama: Ollama, reason: str) -> None:
    _, peer, _ = await spoken_session(gateway, ollama, LONG_ANSWER)
    try:
        await ask(peer, "museums?")
        await peer.next_event("reply.audio.started", within=20)
        await asyncio.sleep(0.5)
        peer.channel.send(json.dumps({"type": "cancel"}))
        cut = await peer.next_event("reply.audio.done", within=5)
        assert cut["interrupted"] is True
        silenced = time.monotonic()
        await asyncio.sleep(0.5)
        last = peer.heard.last_loud()
        assert last is not None
        assert last <= silenced + 0.15
    finally:
        await peer.close()


async def test_connect_helper_still_works_without_speech(gateway: GatewayFactory) -> None:
    # Spoken replies are off by default in the test gateway: nothing is sent back.
    client = await gateway()
    peer, _ = await connect(client)
    try:
        await asyncio.sleep(0.5)
        assert len(peer.heard.frames) == 0
    finally:
        await peer.close()


async def test_a_failing_speech_server_is_an_error_and_the_text_still_arrives(
    gateway: GatewayFactory, ollama: Ollama, engines: EngineCache
) -> None:
    state, url = ollama
    state.reply = ANSWER
    async with speech_server(engine=engines.piper()) as (speech, speech_url):
        speech.mode = "http_error"
        client = await gateway(ollama_host=url, tts_engine="openai", tts_url=speech_url)
        peer, _ = await connect(client)
        try:
            await ask(peer, "weather?")
            events = await gather(peer, "error", "reply.done")
            assert events["error"]["code"] == "tts_unavailable"
            assert events["error"]["retryable"] is True
            assert events["reply.done"]["text"] == ANSWER  # the text reply is whole
            assert not [e for _, e in peer.received if e["type"] == "reply.audio.started"]
            # One failure is enough: the rest of that reply is not sent to the server.
            await asyncio.sleep(0.3)
            assert len([r for r in speech.requests if r["input"] != WARM_UP_TEXT]) == 1
            # The server is back: the next reply is spoken.
            speech.mode = "normal"
            await ask(peer, "and tomorrow?")
            await peer.next_event("reply.audio.started", within=20)
        finally:
            await peer.close()


def test_a_missing_voice_file_stops_start_up_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.ops.cli import main

    with socket.socket() as probe:  # a free port, in case anything got as far as listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    voice = tmp_path / "nobody.onnx"
    argv = ["serve", "--no-tls", "--port", str(port), "--tts-engine", "piper"]
    assert main([*argv, "--tts-voice", str(voice)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("local-ai-gateway: error:")]
    assert len(errors) == 1, err
    assert "--tts-voice" in errors[0]
    assert "Traceback" not in err


async def test_a_voice_per_session_with_a_speech_server(
    gateway: GatewayFactory, ollama: Ollama, engines: EngineCache
) -> None:
    state, url = ollama
    state.reply = ANSWER
    async with speech_server(engine=engines.piper()) as (speech, speech_url):
        client = await gateway(ollama_host=url, tts_engine="openai", tts_url=speech_url)
        peer = LoopbackClient()
        offer = {"sdp": await peer.offer(), "type": "offer", "session": {"voice": "joe"}}
        response = await client.post("/offer", json=offer)
        assert response.status == 200
        await peer.accept(await response.json())
        try:
            ready = await peer.next_event("session.ready", within=10)
            assert ready["tts"] == {"enabled": True, "engine": "openai", "voice": "joe"}
            await ask(peer, "weather?")
            await peer.next_event("reply.audio.started", within=20)
            replies = [r for r in speech.requests if r["input"] != WARM_UP_TEXT]
            assert {r["voice"] for r in replies} == {"joe"}
            # A voice the server does not have: said at the next reply, text unharmed.
            peer.channel.send(json.dumps({"type": "session.update", "voice": "nobody"}))
            await ask(peer, "again?")
            events = await gather(peer, "error", "reply.done")
            assert events["error"]["code"] == "tts_voice_missing"
            assert events["reply.done"]["text"] == ANSWER
        finally:
            await peer.close()


async def test_piper_speaks_one_voice_per_gateway(gateway: GatewayFactory, ollama: Ollama) -> None:
    client, peer, _ = await spoken_session(gateway, ollama, ANSWER)
    try:
        peer.channel.send(json.dumps({"type": "session.update", "voice": "en_US-amy-low"}))
        error = await peer.next_event("error", within=5)
        assert error["code"] == "tts_voice_missing"
        assert "--tts-voice" in error["message"]
        other = LoopbackClient()
        offer = {"sdp": await other.offer(), "type": "offer", "session": {"voice": "amy"}}
        response = await client.post("/offer", json=offer)
        await other.close()
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "tts_voice_missing"
    finally:
        await peer.close()
