"""Loopback: a real aiortc peer sends speech over WebRTC into the app on 127.0.0.1 and gets
``transcript.final`` back on the data channel, with the offline tiny.en on both engines."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.http.state import SESSIONS
from gateway.testing.loopback import DATA, LoopbackClient, load_clips, read_wav
from tests.conftest import GatewayFactory, connect, peer_connection


def words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()


def overlap(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), set(words(hypothesis))
    return sum(w in hyp for w in ref) / len(ref)


@pytest.mark.parametrize("engine", ["openai-whisper", "faster-whisper"])
async def test_speech_gives_transcript(gateway: GatewayFactory, engine: str) -> None:
    # The fixed 500 ms hangover: every timing below follows from it.
    client = await gateway(engine=engine, turn_detection="fixed", vad_silence_ms=500)
    peer, _ = await connect(client)
    text, audio = load_clips()[0]
    peer.mic.play(audio)

    started = await peer.next_event("speech.started")
    stopped = await peer.next_event("speech.stopped")
    final = await peer.next_event("transcript.final")

    assert started["utterance_id"] == stopped["utterance_id"] == final["utterance_id"]
    assert overlap(text, final["text"]) >= 0.85, final["text"]
    timings = final["timings"]
    assert 1000 <= timings["speech_ms"] <= 3000
    # ASR began at the pause, ~300 ms before the 500 ms hangover confirmed the end.
    assert 200 <= timings["asr_head_start_ms"] <= 400
    assert timings["endpoint_to_final_ms"] == pytest.approx(
        timings["asr_ms"] - timings["asr_head_start_ms"], abs=5
    )
    # From the end of speech: Silero's lag, aiortc's ~80 ms jitter buffer (taken out of the
    # end of speech, not of the decision), then the 500 ms hangover in 32 ms VAD chunks.
    assert 500 <= timings["endpoint_ms"] <= 850
    assert timings["speech_end_to_final_ms"] == pytest.approx(
        timings["endpoint_ms"] + timings["endpoint_to_final_ms"], abs=1
    )
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_speech_end_to_final_seconds_count 1.0" in metrics
    assert 'gateway_early_asr_total{outcome="used"} 1.0' in metrics
    await peer.close()


async def test_two_utterances_with_a_pause(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer, _ = await connect(client)
    (text1, audio1), (text2, audio2) = load_clips()[1:3]
    pause = np.zeros(16_000, dtype=np.float32)  # 1 s, well over the 500 ms hangover
    peer.mic.play(np.concatenate([audio1, pause, audio2]))

    first = await peer.next_event("transcript.final")
    second = await peer.next_event("transcript.final")

    assert first["utterance_id"] != second["utterance_id"]
    assert overlap(text1, first["text"]) >= 0.8, first["text"]
    assert overlap(text2, second["text"]) >= 0.8, second["text"]
    await peer.close()


async def test_silence_and_noise_give_no_transcript(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer, _ = await connect(client)
    noise = read_wav(DATA / "noise.wav")
    peer.mic.play(np.concatenate([np.zeros(16_000, dtype=np.float32), noise]))

    events = await peer.collect(4.5)

    # Neither a transcript nor a live caption (the defaults: captions on, turn detection).
    assert [e for e in events if e["type"] in ("transcript.final", "transcript.partial")] == []
    metrics = await (await client.get("/metrics")).text()
    received = next(
        line for line in metrics.splitlines() if line.startswith("gateway_audio_frames_received")
    )
    assert float(received.split()[-1]) > 150  # the audio did arrive: 4.5 s is 225 frames
    await peer.close()


async def test_delete_ends_the_session(gateway: GatewayFactory) -> None:
    client = await gateway()
    registry = client.app[SESSIONS]
    peer, session_id = await connect(client)
    session = registry.get(session_id)

    response = await client.delete(f"/sessions/{session_id}")

    assert response.status == 204
    assert len(registry) == 0
    assert peer_connection(session).connectionState == "closed"
    assert len(session.tasks) == 0
    again = await client.delete(f"/sessions/{session_id}")
    assert again.status == 404
    assert (await again.json())["error"]["code"] == "not_found"
    await peer.close()


async def test_peer_disconnect_ends_the_session(gateway: GatewayFactory) -> None:
    client = await gateway()
    registry = client.app[SESSIONS]
    peer, session_id = await connect(client)
    session = registry.get(session_id)

    await peer.close()
    for _ in range(100):
        if len(registry) == 0:
            break
        await asyncio.sleep(0.1)

    assert len(registry) == 0
    assert peer_connection(session).connectionState == "closed"
    assert len(session.tasks) == 0


async def test_session_limit_gives_503(gateway: GatewayFactory) -> None:
    client = await gateway(max_sessions=1)
    peer, _ = await connect(client)
    other = await connect_raw(client)

    assert other.status == 503
    assert other.headers["Retry-After"].isdigit()
    assert (await other.json())["error"]["code"] == "session_limit"
    assert len(client.app[SESSIONS]) == 1
    await peer.close()


async def connect_raw(client: TestClient) -> ClientResponse:  # type: ignore[type-arg]
    peer = LoopbackClient()
    try:
        return await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
    finally:
        await peer.close()


async def test_a_short_pause_is_one_utterance_and_its_early_asr_is_discarded(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(turn_detection="fixed", vad_silence_ms=500, partial_interval_ms=0)
    peer, _ = await connect(client)
    (text1, audio1), (text2, audio2) = load_clips()[0], load_clips()[2]
    # The clips carry 0.3 s of silence before and 0.2 s after: cut them, then pause 350 ms,
    # past the 200 ms that starts early ASR and short of the 500 ms that ends speech.
    pause = np.zeros(5_600, dtype=np.float32)
    peer.mic.play(np.concatenate([audio1[:-3_200], pause, audio2[4_800:]]))

    final = await peer.next_event("transcript.final")
    extra = await peer.collect(1.5)

    assert overlap(text1 + " " + text2, final["text"]) >= 0.8, final["text"]
    assert [e for e in extra if e["type"] == "transcript.final"] == []
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_early_asr_total{outcome="discarded"}' in metrics
    await peer.close()
