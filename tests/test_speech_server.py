"""The OpenAI-compatible speech server used by the TTS tests: its wire format, its
resampling to 24 kHz, and each fault it can be told to make, seen from a real HTTP client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from gateway.testing.speech_server import PCM_RATE, SpeechServerState, pcm_24k, speech_server
from media import Int16Array
from media.tts.piper import PiperEngine

Served = tuple[SpeechServerState, str]
TIMEOUT = aiohttp.ClientTimeout(total=10)  # no request in this file may hang the run
BODY = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "pcm"}


class ToneEngine:
    """One second of a loud tone per sentence: deterministic and instant."""

    name = "tone"
    voice = "tone"
    voice_per_request = False
    chunks_are_sentences = False

    def __init__(self, sample_rate: int = 22050) -> None:
        self.sample_rate = sample_rate

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        t = np.arange(self.sample_rate) / self.sample_rate
        for _ in range(text.count(".") or 1):
            yield (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with speech_server(engine=ToneEngine()) as (state, url):
        yield state, url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


def test_pcm_24k_resamples_and_passes_24k_through() -> None:
    out = b"".join(pcm_24k(ToneEngine(22050), "One. Two."))
    assert abs(len(out) // 2 - 2 * PCM_RATE) <= 2  # two seconds at 24 kHz, to a sample
    samples = np.frombuffer(out, "<i2")
    assert 9000 < np.abs(samples.astype(np.int32)).max() <= 10001  # a tone, not distorted
    native = b"".join(pcm_24k(ToneEngine(PCM_RATE), "One."))
    assert native == next(iter(ToneEngine(PCM_RATE).synthesize("One."))).astype("<i2").tobytes()


async def test_streams_raw_pcm_and_records_the_request(
    served: Served, http: aiohttp.ClientSession
) -> None:
    state, url = served
    async with http.post(f"{url}/v1/audio/speech", json=BODY) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "audio/pcm"
        body = await response.read()
    assert abs(len(body) // 2 - PCM_RATE) <= 2
    assert state.requests[-1] == BODY
    assert state.calls["POST /v1/audio/speech"] == 1
    assert (state.completed_streams, state.active_streams, state.client_disconnects) == (1, 0, 0)


async def test_audio_arrives_in_chunks_as_it_is_written(
    served: Served, http: aiohttp.ClientSession
) -> None:
    state, url = served
    state.chunk_interval_s, state.chunk_bytes = 0.03, 4800
    started = time.perf_counter()
    arrivals: list[float] = []
    async with http.post(f"{url}/v1/audio/speech", json=BODY) as response:
        async for _ in response.content.iter_any():
            arrivals.append(time.perf_counter() - started)
    assert len(arrivals) > 3
    assert arrivals[0] < arrivals[-1] - 0.15


async def test_a_delay_before_the_first_byte(served: Served, http: aiohttp.ClientSession) -> None:
    state, url = served
    state.first_byte_delay_s = 0.3
    started = time.perf_counter()
    async with http.post(f"{url}/v1/audio/speech", json=BODY) as response:
        assert time.perf_counter() - started >= 0.3
        assert response.status == 200


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"voice": "nobody"}, 404, "voice"),
        ({"model": "tts-9"}, 404, "model"),
        ({"response_format": "mp3"}, 400, "response_format"),
        ({"input": "  "}, 400, "input"),
    ],
)
async def test_bad_requests_get_openai_errors(
    served: Served, http: aiohttp.ClientSession, change: dict[str, str], status: int, param: str
) -> None:
    _, url = served
    async with http.post(f"{url}/v1/audio/speech", json=BODY | change) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_a_body_that_is_not_json_is_400(served: Served, http: aiohttp.ClientSession) -> None:
    _, url = served
    async with http.post(f"{url}/v1/audio/speech", data=b"{oops") as response:
        assert response.status == 400
        assert "invalid JSON" in (await response.json())["error"]["message"]


async def test_http_error_mode(served: Served, http: aiohttp.ClientSession) -> None:
    state, url = served
    state.mode, state.error_status, state.error_message = "http_error", 503, "loading"
    async with http.post(f"{url}/v1/audio/speech", json=BODY) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert (error["message"], error["type"]) == ("loading", "server_error")


async def read_until_quiet(response: aiohttp.ClientResponse, quiet_s: float) -> bytes:
    """What arrives until nothing has for ``quiet_s`` (failing if the body ends)."""
    got = b""
    while True:
        try:
            data = await asyncio.wait_for(response.content.readany(), quiet_s)
        except TimeoutError:
            return got
        assert data, "the body ended: no stall"
        got += data


async def test_a_stall_sends_some_audio_then_nothing(
    served: Served, http: aiohttp.ClientSession
) -> None:
    state, url = served
    state.mode, state.stall_after_bytes = "stall", 9600
    async with http.post(f"{url}/v1/audio/speech", json=BODY) as response:
        got = await read_until_quiet(response, 0.5)
        assert len(got) == 9600
        assert state.active_streams == 1
    for _ in range(200):  # the server notices the client leave within its poll
        if state.active_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert (state.active_streams, state.client_disconnects, state.completed_streams) == (0, 1, 0)


async def test_stopping_ends_a_stall_promptly(http: aiohttp.ClientSession) -> None:
    state = SpeechServerState(mode="stall", stall_after_bytes=0)
    started = time.perf_counter()
    async with speech_server(state, engine=ToneEngine()) as (_, url):
        response = await http.post(f"{url}/v1/audio/speech", json=BODY)
        assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # cut: no end of the chunked body
    response.release()
    assert time.perf_counter() - started < 2.5


async def test_speaks_with_the_real_piper_voice(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    piper = await asyncio.to_thread(PiperEngine, None, cache_dir=tmp_path)
    async with (
        speech_server(engine=piper) as (_, url),
        http.post(f"{url}/v1/audio/speech", json=BODY | {"input": "Hello there."}) as response,
    ):
        audio = np.frombuffer(await response.read(), "<i2")
    assert 0.3 < audio.size / PCM_RATE < 2.0
    assert np.abs(audio.astype(np.int32)).max() > 10000
