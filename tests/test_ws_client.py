"""The example client (``examples/ws_client.py``) as a user runs it: a subprocess that speaks
a WAV over ``wss://`` to a served gateway with TLS from its own CA and an API key, prints
the transcript and the reply, and writes the spoken reply to a WAV."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from gateway.http.app import build_app
from gateway.ops.cli import _tls_context
from gateway.ops.config import Config
from gateway.testing.loopback import DATA
from tests.conftest import EngineCache, Ollama
from tests.test_spoken import ANSWER

CLIENT = Path(__file__).resolve().parents[1] / "examples" / "ws_client.py"
API_KEY = "ws-client-test-key-0123456789"


@dataclass(frozen=True)
class Served:
    url: str
    ca: Path


@pytest.fixture
async def served(tmp_path: Path, engines: EngineCache, ollama: Ollama) -> AsyncIterator[Served]:
    """The gateway on a real port, with TLS, --auth api-key and the Piper voice."""
    state, url = ollama
    state.reply = ANSWER
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    config = Config(
        admission="off",
        cert_dir=tmp_path / "certs",
        port=0,
        tts_engine="piper",
        auth="api-key",
        api_keys_file=keys,
        ollama_host=url,
    )
    server_ssl = _tls_context(config)
    app = build_app(config, engine=engines.get("openai-whisper"), tts=engines.piper())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield Served(f"wss://localhost:{port}/ws", tmp_path / "certs" / "rootCA.pem")
    finally:
        await runner.cleanup()


async def run_client(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_TOKEN"}
    if token is not None:
        env["GATEWAY_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_example_client_speaks_a_wav_and_writes_the_spoken_reply(
    served: Served, tmp_path: Path
) -> None:
    reply = tmp_path / "reply.wav"
    code, out, err = await run_client(
        str(DATA / "weather.wav"),
        "--url",
        served.url,
        "--ca",
        str(served.ca),
        "--out",
        str(reply),
        token=API_KEY,
    )
    assert code == 0, err
    lines = out.splitlines()
    said = next(line for line in lines if line.startswith("you:"))
    assert "weather" in said.lower(), out
    assert "paris" in said.lower(), out
    assert f"gateway: {ANSWER}" in lines, out
    with wave.open(str(reply), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert 3.0 <= len(pcm) / 16_000 <= 10.0  # the whole answer, spoken
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 0.02 * 32768
    assert "spoken reply:" in err


async def test_the_example_client_says_why_it_cannot_connect(
    served: Served,
) -> None:
    code, _, err = await run_client(
        str(DATA / "weather.wav"), "--url", served.url, "--ca", str(served.ca), token="wrong" * 4
    )
    assert code != 0
    assert "refused the WebSocket: 401" in err
    code, _, err = await run_client(str(DATA / "weather.wav"), "--url", served.url, token=API_KEY)
    assert code != 0
    assert "cannot talk to" in err
    assert "certificate" in err.lower()  # the system does not trust the gateway's CA


@pytest.mark.skipif(
    importlib.util.find_spec("sounddevice") is not None, reason="sounddevice is installed"
)
async def test_the_microphone_needs_sounddevice_and_says_so() -> None:
    code, _, err = await run_client("--mic", "--url", "ws://127.0.0.1:9/ws")
    assert code != 0
    assert "pip install sounddevice" in err
