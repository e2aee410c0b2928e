"""Loopback: audio over ``/ws`` into the real app on 127.0.0.1 (Silero, the offline tiny.en,
the Ollama-compatible server, Piper): speech in as s16le frames at real-time pace gives
the transcript and the reply; spoken replies come back as paced binary frames at the
session's rate that Whisper understands; bad frames, oversized frames and audio faster
than real time are refused with an event while the session goes on; speaking over the
voice cuts it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from gateway.conversation.dialogue import Conversation, ConversationSettings
from gateway.conversation.llm import LLMSettings, OllamaChat
from gateway.http.state import SESSIONS
from gateway.http.ws import MAX_MESSAGE_BYTES
from gateway.ops.metrics import Metrics
from gateway.testing.loopback import load_clips
from media import Float32Array
from signalling import protocol
from signalling.errors import ProtocolError
from signalling.lifecycle import SessionLimits
from signalling.session import Session
from tests.conftest import EngineCache, GatewayFactory, Ollama
from tests.test_loopback_voice import overlap
from tests.test_sessions import StalledTransport
from tests.test_spoken import ANSWER, LONG_ANSWER, wer


def at_rate(audio: Float32Array, rate: int) -> bytes:
    """16 kHz float32 → s16le mono at ``rate``."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    if rate == 16_000:
        return pcm.astype("<i2").tobytes()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16_000
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in out)


def to_16k(pcm: bytes, rate: int) -> Float32Array:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
    if rate != 16_000:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        out = [*resampler.resample(frame), *resampler.resample(None)]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in out])
    return (samples.astype(np.float32) / 32768).astype(np.float32)


class WsAudioPeer:
    """A /ws device: sends PCM at real-time pace, and keeps every event and binary frame
    with the time it arrived (one log, in arrival order)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.log: list[tuple[float, dict[str, Any] | bytes]] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                item: dict[str, Any] | bytes = json.loads(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                item = message.data
            else:
                break
            async with self._arrived:
                self.log.append((time.monotonic(), item))
                self._arrived.notify_all()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for _, e in self.log if isinstance(e, dict) and kind in (None, e["type"])]

    def audio(self) -> list[tuple[float, bytes]]:
        return [(t, e) for t, e in self.log if isinstance(e, bytes)]

    async def event(self, kind: str, *, within: float = 20.0, nth: int = 0) -> dict[str, Any]:
        """The ``nth`` event of ``kind`` (0: the first), waiting for it if need be."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.events(kind)) > nth), within
            )
        return self.events(kind)[nth]

    def arrival(self, event: dict[str, Any]) -> float:
        return next(t for t, e in self.log if e is event)

    async def speak(self, pcm: bytes, rate: int, *, frame_ms: int = 20, speed: float = 1.0) -> None:
        """Frames of ``frame_ms`` at ``speed`` times real time (due by the frame count)."""
        step = rate * frame_ms // 1000 * 2
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), step)):
            delay = start + n * frame_ms / 1000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send_bytes(pcm[offset : offset + step])

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)


async def ws_audio(client: TestClient, **update: Any) -> WsAudioPeer:  # type: ignore[type-arg]
    peer = WsAudioPeer(await client.ws_connect("/ws"))
    await peer.event("session.ready", within=10)
    if update:
        await peer.ws.send_json({"type": "session.update", **update})
    return peer


async def test_speech_over_ws_gives_a_transcript_and_a_reply(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    client = await gateway(ollama_host=ollama[1], turn_detection="fixed", vad_silence_ms=500)
    peer = await ws_audio(client)
    try:
        [ready] = peer.events("session.ready")
        assert ready["tts"] == {"enabled": False}  # this gateway has no voice
        text, audio = load_clips()[0]
        await peer.speak(at_rate(audio, 16_000) + bytes(32_000), 16_000)  # and a second's silence
        started = await peer.event("speech.started")
        final = await peer.event("transcript.final")
        assert started["utterance_id"] == final["utterance_id"]
        assert overlap(text, final["text"]) >= 0.85, final["text"]
        reply = await peer.event("reply.started")
        assert reply["utterance_id"] == final["utterance_id"]
        done = await peer.event("reply.done")
        assert done["text"] == f"You said: {final['text']}. That is all."
        timings = final["timings"]
        # End of speech is when its frame arrived, less the rest of that frame (no jitter
        # buffer to take out); then Silero's lag and the 500 ms hangover in 32 ms chunks.
        assert 450 <= timings["endpoint_ms"] <= 850, timings
        assert timings["speech_end_to_final_ms"] == pytest.approx(
            timings["endpoint_ms"] + timings["endpoint_to_final_ms"], abs=1
        )
        assert peer.events("error") == []
        assert peer.audio() == []  # no voice: no binary frames
        metrics = await (await client.get("/metrics")).text()
        received = next(
            line
            for line in metrics.splitlines()
            if line.startswith("gateway_audio_frames_received")
        )
        assert float(received.split()[-1]) == pytest.approx(165, abs=1)  # 3.3 s in 20 ms frames
    finally:
        await peer.close()


@pytest.mark.parametrize("rate", [8_000, 48_000])
async def test_spoken_replies_come_back_at_the_session_s_rate(
    gateway: GatewayFactory, ollama: Ollama, engines: EngineCache, rate: int
) -> None:
    state, url = ollama
    state.reply = ANSWER
    client = await gateway(speak=True, ollama_host=url)
    peer = await ws_audio(client, sample_rate=rate, tts=True)
    try:
        [ready] = peer.events("session.ready")
        assert ready["tts"] == {"enabled": False, "engine": "piper", "voice": "en_US-joe-medium"}
        text, audio = load_clips()[0]
        await peer.speak(at_rate(audio, rate) + bytes(2 * rate), rate)
        final = await peer.event("transcript.final")
        assert overlap(text, final["text"]) >= 0.85, final["text"]
        started = await peer.event("reply.audio.started", within=30)
        finished = await peer.event("reply.audio.done", within=60)
        done = await peer.event("reply.done")
        assert started["reply_id"] == finished["reply_id"] == done["reply_id"]
        assert finished["interrupted"] is False
        assert started["timings"]["tts_first_audio_ms"] > 0
        await asyncio.sleep(0.2)  # the filter's last samples
        frames = peer.audio()
        # The event that says the voice began comes before its first frame.
        assert peer.arrival(started) <= frames[0][0]
        assert max(len(f) for _, f in frames) == 2 * rate // 50  # 20 ms frames
        pcm = b"".join(f for _, f in frames)
        seconds = len(pcm) / 2 / rate
        assert 3.0 <= seconds <= 10.0
        # Paced in real time: the frames took about as long to come as they last.
        span = frames[-1][0] - frames[0][0]
        assert seconds - 0.5 <= span <= seconds + 1.0
        heard = to_16k(pcm, rate)
        assert np.sqrt(np.mean(heard**2)) > 0.02  # speech, not silence
        said = engines.get("openai-whisper").transcribe(heard, "en").text
        limit = 0.25 if rate > 8_000 else 0.35  # telephone bandwidth costs Whisper a little
        assert wer(ANSWER, said) <= limit, said
        assert peer.events("error") == []
    finally:
        await peer.close()


async def test_bad_frames_are_errors_and_the_session_goes_on(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    client = await gateway(ollama_host=ollama[1])
    peer = await ws_audio(client)
    try:
        await peer.ws.send_bytes(bytes(641))
        odd = await peer.event("error")
        assert odd["code"] == "bad_audio"
        assert "641 bytes is not whole samples" in odd["message"]
        await peer.ws.send_bytes(bytes(48_000))  # 1.5 s at 16 kHz
        large = await peer.event("error", nth=1)
        assert large["code"] == "audio_too_large"
        assert "1500 ms at 16000 Hz" in large["message"]
        # A rate that /ws audio does not take is a bad message; a good one works.
        await peer.ws.send_json({"type": "session.update", "sample_rate": 44_100})
        bad_rate = await peer.event("error", nth=2)
        assert bad_rate["code"] == "bad_message"
        assert "8000, 16000, 24000, 48000" in bad_rate["message"]
        await peer.ws.send_json({"type": "session.update", "sample_rate": 8_000})
        await peer.ws.send_bytes(bytes(16_000))  # 1 s at 8 kHz: the limit, not over it
        await peer.speak(bytes(8_000), 8_000, speed=4)
        await peer.ws.send_json({"type": "ping", "id": 1})
        assert await peer.event("pong") == {"type": "pong", "id": 1}
        assert len(peer.events("error")) == 3
    finally:
        await peer.close()


async def test_a_frame_past_the_socket_s_limit_closes_it(gateway: GatewayFactory) -> None:
    client = await gateway()
    registry = client.app[SESSIONS]
    peer = await ws_audio(client)
    await peer.ws.send_bytes(bytes(MAX_MESSAGE_BYTES + 2))
    await asyncio.wait_for(peer._reader, 5)
    assert peer.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    for _ in range(100):
        if len(registry) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(registry) == 0


async def test_audio_faster_than_real_time_is_dropped_not_queued(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    client = await gateway(ollama_host=ollama[1])
    peer = await ws_audio(client)
    try:
        noise = at_rate(load_clips()[3][1], 16_000)
        began = time.monotonic()
        for _ in range(5):  # 10 s of audio as fast as the socket takes it
            for offset in range(0, len(noise), 640):
                await peer.ws.send_bytes(noise[offset : offset + 640])
        asked = time.monotonic()
        await peer.ws.send_json({"type": "ping", "id": "after"})
        pong = await peer.event("pong", within=5)
        # At most the burst was in front of the ping (2 s of audio through the VAD takes
        # ~0.3 s): the gateway kept up by dropping the rest.
        assert peer.arrival(pong) - asked < 1.0
        [error] = peer.events("error")  # one, for the whole overload
        assert error["code"] == "rate_limited"
        assert error["retryable"] is True
        elapsed = time.monotonic() - began
        metrics = await (await client.get("/metrics")).text()
        received = next(
            line
            for line in metrics.splitlines()
            if line.startswith("gateway_audio_frames_received")
        )
        heard_s = float(received.split()[-1]) * 0.02
        assert heard_s <= 2.0 + 1.05 * elapsed + 0.02  # the burst and real time, no more
        assert heard_s < 8.0
        assert 'gateway_errors_total{code="rate_limited"} 1.0' in metrics
    finally:
        await peer.close()


async def test_speaking_over_the_voice_cuts_it(gateway: GatewayFactory, ollama: Ollama) -> None:
    state, url = ollama
    state.reply = LONG_ANSWER
    client = await gateway(speak=True, ollama_host=url)
    peer = await ws_audio(client, tts=True)
    try:
        await peer.ws.send_json({"type": "text", "text": "tell me about museums"})
        await peer.event("reply.audio.started", within=30)
        await asyncio.sleep(1.0)  # let it speak a sentence
        _, audio = load_clips()[0]
        speaking = asyncio.create_task(peer.speak(at_rate(audio, 16_000) + bytes(32_000), 16_000))
        cut = await peer.event("reply.audio.done", within=20)
        assert cut["interrupted"] is True
        silenced = peer.arrival(cut)
        final = await peer.event("transcript.final", within=20)
        assert "weather" in final["text"].lower(), final["text"]
        await speaking
        # The voice stopped at once: no frame after the cut (the answer to what was said
        # begins only after its transcript).
        answered = peer.arrival(final)
        assert [t for t, _ in peer.audio() if silenced < t < answered] == []
        spoken = b"".join(f for t, f in peer.audio() if t <= silenced)
        assert 0.5 <= len(spoken) / 32_000 < 10.0  # it had spoken, and not all of it
        metrics = await (await client.get("/metrics")).text()
        assert 'gateway_replies_spoken_total{outcome="cut"} 1.0' in metrics
    finally:
        await peer.close()


def test_sample_rate_is_parsed_and_checked() -> None:
    update = protocol.parse_client_message('{"type": "session.update", "sample_rate": 48000}')
    assert update == protocol.SessionUpdate(sample_rate=48_000)
    for bad in ("44100", "16000.0", "true", '"16000"', "[16000]"):
        with pytest.raises(ProtocolError, match='"sample_rate" must be one of'):
            protocol.parse_client_message(f'{{"type": "session.update", "sample_rate": {bad}}}')


async def test_webrtc_sessions_have_no_sample_rate_to_choose() -> None:
    transport = StalledTransport()
    transport.release.set()
    session = Session("s1", transport)
    llm = OllamaChat(LLMSettings(host="http://127.0.0.1:9", connect_timeout_s=0.5))
    conversation = Conversation(session, llm, Metrics(), ConversationSettings(system_prompt="x"))
    session.start(SessionLimits())
    try:
        conversation.handle(protocol.SessionUpdate(sample_rate=8_000, system_prompt="changed"))
        await asyncio.sleep(0.05)
        [error] = [json.loads(t) for t in transport.written]
        assert error["code"] == "not_supported"
        assert conversation.system_prompt == "x"  # all or nothing
        chosen: list[int] = []
        conversation.on_sample_rate = chosen.append  # what /ws sets
        conversation.handle(protocol.SessionUpdate(sample_rate=8_000))
        assert chosen == [8_000]
    finally:
        await session.close("client")
