"""The shared ASR service (issue 12): OpenAI's transcription API served by
``local-ai-gateway asr-server`` with the real tiny.en weights, the gateway's client of it
(``--asr-url``), and what a session sees when the server dies and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import ClientSession, FormData, UnixConnector, web
from aiohttp.test_utils import TestClient

from gateway.errors import ConfigError
from gateway.http.app import build_app
from gateway.http.transcriptions import ASRServerSettings, build_asr_app
from gateway.ops.children import prepare_socket_path
from gateway.ops.config import Config, load_config
from gateway.ops.doctor import check_asr_server
from gateway.testing.loopback import LoopbackClient, load_clips
from media import Float32Array
from media.asr import wire
from media.asr.base import Segment, Transcription
from media.asr.remote import RemoteASR, error_from_answer, model_from_listing, parse_asr_url
from media.asr.service import Priority
from media.errors import (
    ASRBusyError,
    ASRError,
    ASRStaleError,
    ASRUnavailable,
    UnsupportedLanguage,
)
from tests.conftest import AiohttpClient, EngineCache, Ollama

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 60.0  # importing torch and loading tiny.en on a busy 2-core machine


# --- the wire format (pure) ---


def test_wav_round_trip_is_exact_to_16_bits() -> None:
    audio = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    decoded = wire.decode_plain_wav(wire.encode_wav(audio))
    assert decoded is not None
    assert decoded.dtype == np.float32
    assert np.max(np.abs(decoded - audio)) < 1 / 16000


def test_only_16_khz_mono_16_bit_wav_skips_ffmpeg() -> None:
    assert wire.decode_plain_wav(wire.encode_wav(np.zeros(100, np.float32), rate=48000)) is None
    assert wire.decode_plain_wav(b"OggS" + bytes(100)) is None
    assert wire.decode_plain_wav(b"RIFF" + bytes(4) + b"WAVE" + bytes(40)) is None


def test_answers_of_both_shapes_become_transcriptions() -> None:
    verbose = {
        "text": "hello",
        "segments": [{"text": " hello", "avg_logprob": -0.2, "no_speech_prob": 0.1}],
    }
    assert wire.transcription_from_json(verbose) == Transcription((Segment(" hello", -0.2, 0.1),))
    assert wire.transcription_from_json({"text": "hi"}).text == "hi"
    assert wire.transcription_from_json({"text": "  "}) == Transcription(())
    bad: object
    for bad in ([], {"segments": []}, {"text": 3}):
        with pytest.raises(ValueError, match="no text"):
            wire.transcription_from_json(bad)


def test_asr_urls() -> None:
    assert parse_asr_url("unix:/run/g/asr.sock").socket == "/run/g/asr.sock"
    assert parse_asr_url("unix:///run/g/asr.sock").socket == "/run/g/asr.sock"
    assert parse_asr_url("http://127.0.0.1:8002").base == "http://127.0.0.1:8002/v1"
    assert parse_asr_url("http://localhost:8000/v1/").base == "http://localhost:8000/v1"
    assert parse_asr_url("https://asr.lan/api").base == "https://asr.lan/api/v1"
    assert parse_asr_url("http://[::1]:8002").loopback
    assert parse_asr_url("unix:/x.sock").loopback
    assert not parse_asr_url("http://10.0.0.5:8000").loopback
    for bad in ("ftp://x", "unix:relative.sock", "http://u:p@127.0.0.1", "127.0.0.1:8002"):
        with pytest.raises(ValueError, match="expected"):
            parse_asr_url(bad)


def test_a_remote_asr_url_needs_its_flag() -> None:
    with pytest.raises(ConfigError, match="--allow-remote-asr"):
        load_config(["--asr-url", "http://10.0.0.5:8000"], {})
    with pytest.raises(ConfigError, match="--asr-url"):
        load_config(["--asr-url", "asr.lan:8000"], {})
    config = load_config(["--asr-url", "http://10.0.0.5:8000", "--allow-remote-asr"], {})
    assert config.asr_url == "http://10.0.0.5:8000"
    assert load_config([], {"GATEWAY_ASR_URL": "unix:/run/a.sock"}).asr_url == "unix:/run/a.sock"


def test_what_a_model_listing_says() -> None:
    ours = {"data": [{"id": "small", "engine": "faster-whisper", "device": "cuda",
                      "languages": ["en", "de"]}]}  # fmt: skip
    info = model_from_listing(ours, "tiny.en")  # the one model it serves, whatever we asked
    assert (info.name, info.model, info.device) == ("faster-whisper", "small", "cuda")
    assert info.languages == {"en", "de"}
    vllm = {"data": [{"id": "openai/whisper-large-v3"}, {"id": "distil-whisper.en"}]}
    assert model_from_listing(vllm, "distil-whisper.en").languages == {"en"}
    other = model_from_listing(vllm, "openai/whisper-large-v3")
    assert (other.device, other.languages) == ("remote", frozenset())  # the server decides
    with pytest.raises(ValueError, match="expected"):
        model_from_listing({"models": []}, "x")


def test_socket_path_preparation(tmp_path: Path) -> None:
    path = tmp_path / "run" / "asr.sock"
    prepare_socket_path(path)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        prepare_socket_path(path)


# --- the server, in process, with the real model ---


@pytest.fixture
async def asr_client(aiohttp_client: AiohttpClient, engines: EngineCache) -> TestClient:  # type: ignore[type-arg]
    app = build_asr_app(ASRServerSettings(max_pending=1), engines.get("openai-whisper"))
    return await aiohttp_client(app)


def upload(data: bytes, filename: str = "speech.wav", **fields: str) -> FormData:
    form = FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


def encoded(audio: Float32Array, codec: str, container: str) -> bytes:
    """``audio`` (16 kHz) as a file of another kind, at 48 kHz stereo, through PyAV."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as file:
        stream = file.add_stream(codec, rate=48000, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        resampler = av.AudioResampler(format=stream.format.name, layout="stereo", rate=48000)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for piece in (*resampler.resample(frame), *resampler.resample(None)):
            for packet in stream.encode(piece):
                file.mux(packet)
        for packet in stream.encode(None):
            file.mux(packet)
    return out.getvalue()


async def test_transcribes_wav_and_compressed_uploads(asr_client: TestClient) -> None:  # type: ignore[type-arg]
    text, audio = load_clips()[0]
    words = text.lower().rstrip(".").split()
    response = await asr_client.post(
        wire.PATH, data=upload(wire.encode_wav(audio), response_format="verbose_json")
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert words[-1] in body["text"].lower()
    assert body["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert body["language"] == "en"
    segment = body["segments"][0]
    assert segment["avg_logprob"] < 0
    assert 0 <= segment["no_speech_prob"] <= 1

    for codec, container in (("libopus", "ogg"), ("flac", "flac")):
        data = encoded(audio, codec, container)
        response = await asr_client.post(wire.PATH, data=upload(data, f"speech.{container}"))
        assert response.status == 200, await response.text()
        assert words[-1] in (await response.json())["text"].lower()

    response = await asr_client.post(
        wire.PATH, data=upload(wire.encode_wav(audio), response_format="text")
    )
    assert response.content_type == "text/plain"
    assert words[-1] in (await response.text()).lower()


async def test_lists_its_model(asr_client: TestClient) -> None:  # type: ignore[type-arg]
    listing = await (await asr_client.get("/v1/models")).json()
    assert model_from_listing(listing, "whatever").model == "tiny.en"
    assert listing["data"][0]["languages"] == ["en"]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"json": {"file": "x"}}, 415, "unsupported_media_type"),
        ({"data": FormData({"model": "tiny.en"})}, 400, "bad_request"),
        ({"data": upload(b"not audio at all" * 20)}, 400, "invalid_audio"),
        ({"data": upload(wire.encode_wav(np.zeros(16000 * 31, np.float32)))}, 413,
         "audio_too_long"),
        ({"data": upload(wire.encode_wav(np.zeros(1600, np.float32)), language="fr")}, 400,
         "unsupported_language"),
        ({"data": upload(wire.encode_wav(np.zeros(1600, np.float32)), response_format="srt")},
         400, "bad_request"),
        ({"data": upload(wire.encode_wav(np.zeros(1600, np.float32))),
          "headers": {wire.PRIORITY_HEADER: "urgent"}}, 400, "bad_request"),
        ({"data": upload(wire.encode_wav(np.zeros(1600, np.float32))),
          "headers": {wire.DEADLINE_HEADER: "soon"}}, 400, "bad_request"),
        # Forms that cannot be read: no boundary, a part without a name, a broken part.
        ({"data": b"xx", "headers": {"Content-Type": "multipart/form-data"}}, 400,
         "bad_request"),
        ({"data": b"--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--\r\n",
          "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, "bad_request"),
        ({"data": b"--b\r\ngarbage",
          "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400, "bad_request"),
    ],
)  # fmt: skip
async def test_bad_requests_get_clear_errors(
    asr_client: TestClient,  # type: ignore[type-arg]
    request_kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = await asr_client.post(wire.PATH, **request_kwargs)  # type: ignore[arg-type]
    assert response.status == status, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["message"]


async def test_a_full_queue_is_a_503_to_retry(asr_client: TestClient) -> None:  # type: ignore[type-arg]
    _, audio = load_clips()[1]
    first = asyncio.create_task(asr_client.post(wire.PATH, data=upload(wire.encode_wav(audio))))
    while (await (await asr_client.get("/health")).json())["pending"] == 0:  # noqa: ASYNC110 - another process's state
        await asyncio.sleep(0.01)
    busy = await asr_client.post(wire.PATH, data=upload(wire.encode_wav(audio)))
    assert busy.status == 503
    assert busy.headers["Retry-After"] == "1"
    assert (await busy.json())["error"]["code"] == "asr_busy"
    assert (await first).status == 200


# --- the gateway's client, over a Unix socket ---


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short path: a Unix socket's name is at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="asr-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
async def unix_server(engines: EngineCache, socket_dir: Path) -> AsyncIterator[Path]:
    runner = web.AppRunner(
        build_asr_app(ASRServerSettings(max_pending=1), engines.get("openai-whisper")),
        handler_cancellation=True,
    )
    await runner.setup()
    path = socket_dir / "asr.sock"
    await web.UnixSite(runner, str(path)).start()
    yield path
    await runner.cleanup()


async def test_remote_recogniser_matches_the_engine(
    unix_server: Path, engines: EngineCache
) -> None:
    client = RemoteASR(parse_asr_url(f"unix:{unix_server}"), model="tiny.en")
    await client.start()
    try:
        assert client.reachable
        assert (client.engine.name, client.engine.model) == ("openai-whisper", "tiny.en")
        assert client.engine.languages == {"en"}
        _, audio = load_clips()[0]
        remote = await client.transcribe(audio, None, priority=Priority.EARLY, deadline_s=5)
        local = engines.get("openai-whisper").transcribe(audio, None)
        assert remote.text == local.text
        assert remote.segments[0].avg_logprob == pytest.approx(local.segments[0].avg_logprob,
                                                               abs=0.05)  # fmt: skip
        assert client.idle
        with pytest.raises(UnsupportedLanguage):
            await client.transcribe(audio, "de")
    finally:
        await client.close()


async def test_remote_errors_keep_their_meaning(unix_server: Path) -> None:
    endpoint = parse_asr_url(f"unix:{unix_server}")
    one = RemoteASR(endpoint, model="tiny.en", max_pending=1)
    other = RemoteASR(endpoint, model="tiny.en")
    await one.start()
    await other.start()
    try:
        _, audio = load_clips()[1]
        running = asyncio.create_task(one.transcribe(audio, None))
        async with asyncio.timeout(10):  # the server's one place is taken
            while not (await server_health(unix_server))["pending"]:  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.01)
        with pytest.raises(ASRBusyError, match="utterances at the ASR server"):  # ours
            await one.transcribe(audio, None)
        with pytest.raises(ASRBusyError, match="answered 503"):  # the server's
            await other.transcribe(audio, None, priority=Priority.PARTIAL)
        assert (await running).text
    finally:
        await one.close()
        await other.close()


def test_error_answers_map_to_our_errors() -> None:
    where = parse_asr_url("http://127.0.0.1:8002")
    stale = b'{"error": {"code": "asr_stale", "message": "deadline"}}'
    assert type(error_from_answer(503, stale, where)) is ASRStaleError
    assert type(error_from_answer(429, b"slow down", where)) is ASRBusyError
    assert type(error_from_answer(502, b"<html>bad gateway</html>", where)) is ASRUnavailable
    language = b'{"error": {"code": "unsupported_language", "message": "no"}}'
    assert type(error_from_answer(400, language, where)) is UnsupportedLanguage
    refused = error_from_answer(401, b'{"error": "no key"}', where)
    assert "credentials" in str(refused)
    odd = error_from_answer(500, b"[1, 2]", where)
    assert "answered 500: [1, 2]" in str(odd)


async def test_an_answer_sent_in_pieces_is_read_whole(socket_dir: Path) -> None:
    """As a proxy or a streaming server sends it: chunked, with pauses between pieces."""
    answer = json.dumps(
        {"text": " Hello there.", "language": "en", "duration": 1.0,
         "segments": [{"text": " Hello there.", "avg_logprob": -0.2,
                       "no_speech_prob": 0.01, "start": 0.0, "end": 1.0}]}
    ).encode()  # fmt: skip

    async def transcriptions(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(answer), 16):
            await response.write(answer[start : start + 16])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    runner = web.AppRunner(app)
    await runner.setup()
    path = socket_dir / "pieces.sock"
    await web.UnixSite(runner, str(path)).start()
    client = RemoteASR(parse_asr_url(f"unix:{path}"), model="tiny.en")
    await client.start()  # no model listing here: only logged
    try:
        heard = await client.transcribe(np.zeros(16000, np.float32), None)
        assert heard.text == "Hello there."
    finally:
        await client.close()
        await runner.cleanup()


async def test_an_absent_server_is_unavailable_at_once(socket_dir: Path) -> None:
    client = RemoteASR(parse_asr_url(f"unix:{socket_dir}/none.sock"), model="tiny.en")
    await client.start()  # logs, does not fail: the server may come up later
    try:
        assert not client.reachable
        assert "asr-server" in (await client.check() or "")
        with pytest.raises(ASRUnavailable, match="cannot reach"):
            async with asyncio.timeout(3):
                await client.transcribe(np.zeros(16000, np.float32), None)
    finally:
        await client.close()


# --- a real asr-server process, killed under a live session ---


async def server_health(path: Path) -> dict[str, object]:
    async with (
        ClientSession(connector=UnixConnector(path=str(path))) as http,
        http.get("http://localhost/health") as response,
    ):
        assert response.status == 200
        body: dict[str, object] = await response.json()
        return body


async def start_server(path: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "asr-server", "--socket", str(path),
            "--asr-device", "cpu", stdout=out, stderr=out, cwd=ROOT,
        )  # fmt: skip
    async with asyncio.timeout(SERVER_START_S):
        while True:
            assert proc.returncode is None, log.read_text()  # noqa: ASYNC240 - a failure's log
            if os.path.exists(path):  # noqa: ASYNC240 - a stat, while waiting anyway
                with contextlib.suppress(OSError):
                    await server_health(path)
                    return proc
            await asyncio.sleep(0.2)


async def spoken(peer: LoopbackClient, audio: Float32Array) -> dict[str, object]:
    """What the session says about one utterance: its final transcript, or its error."""
    peer.mic.play(audio)
    return await peer.next_event("transcript.final", "error", within=30)


async def test_a_killed_asr_server_costs_utterances_not_sessions(
    aiohttp_client: AiohttpClient, ollama: Ollama, socket_dir: Path
) -> None:
    path = socket_dir / "asr.sock"
    log = socket_dir / "asr.log"
    server = await start_server(path, log)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()
    config = Config(no_tls=True, tts_engine="none", ollama_host=ollama[1],
                    asr_url=f"unix:{path}", admission="off")  # fmt: skip
    client = await aiohttp_client(build_app(config))
    peer = LoopbackClient()
    try:
        response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
        assert response.status == 200, await response.text()
        await peer.accept(await response.json())
        ready = await peer.next_event("session.ready", within=10)
        assert ready["asr"] == {"engine": "openai-whisper", "model": "tiny.en"}
        clips = load_clips()

        first = await spoken(peer, clips[0][1])
        assert first["type"] == "transcript.final", first
        assert "weather" in str(first["text"]).lower()

        server.send_signal(signal.SIGKILL)
        await server.wait()
        lost = await spoken(peer, clips[1][1])
        assert lost["type"] == "error", lost
        assert lost["code"] == "asr_unavailable"
        assert lost["retryable"] is True
        ready_check = await client.get("/ready")
        assert ready_check.status == 503
        assert not (await ready_check.json())["checks"]["asr"]["ok"]

        server = await start_server(path, log)  # the dead one's socket file is replaced
        again = await spoken(peer, clips[2][1])
        assert again["type"] == "transcript.final", again
        assert (await client.get("/ready")).status == 200
        assert "Traceback" not in log.read_text()
    finally:
        await peer.close()
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await server.wait()
    assert server.returncode == 0
    assert not path.exists()  # a clean stop removes its socket


async def test_the_server_refuses_a_socket_another_one_serves(socket_dir: Path) -> None:
    path = socket_dir / "asr.sock"
    server = await start_server(path, socket_dir / "first.log")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "asr-server", "--socket", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), SERVER_START_S)
        assert proc.returncode == 1
        assert "already serving" in out.decode()
        assert "Traceback" not in out.decode()
        assert (await server_health(path))["ok"] is True  # the first one is undisturbed
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()


async def test_doctor_checks_the_asr_server(unix_server: Path, socket_dir: Path) -> None:
    [found] = await check_asr_server(Config(asr_url=f"unix:{unix_server}"))
    assert found.status == "ok"
    assert "openai-whisper tiny.en on cpu" in found.detail
    [missing] = await check_asr_server(Config(asr_url=f"unix:{socket_dir}/none.sock"))
    assert missing.status == "fail"
    assert "asr-server" in missing.detail


async def test_an_api_key_guards_the_api_not_the_health(
    engines: EngineCache, socket_dir: Path, tmp_path: Path
) -> None:
    key = "k" * 40
    runner = web.AppRunner(
        build_asr_app(ASRServerSettings(api_keys=(key,)), engines.get("openai-whisper"))
    )
    await runner.setup()
    path = socket_dir / "keyed.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        assert (await server_health(path))["ok"] is True
        endpoint = parse_asr_url(f"unix:{path}")
        _, audio = load_clips()[0]
        for wrong in (None, "x" * 40):
            client = RemoteASR(endpoint, model="tiny.en", api_key=wrong)
            await client.start()
            try:
                with pytest.raises(ASRError, match="--asr-api-key-file"):
                    await client.transcribe(audio, None)
            finally:
                await client.close()
        keys = tmp_path / "asr-key"
        keys.write_text(f"# the server's key\n{key}\n")
        config = Config(asr_url=f"unix:{path}", asr_api_key_file=keys)
        [found] = await check_asr_server(config)
        assert found.status == "ok", found
    finally:
        await runner.cleanup()
