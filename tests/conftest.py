"""Shared fixtures: one loaded Whisper model per engine for the whole run, and a gateway
app served on 127.0.0.1 by pytest-aiohttp for loopback tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aioice.ice
import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection

from gateway.http.app import build_app
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from media.tts.base import TTSEngine
from media.tts.piper import PiperEngine
from signalling.datachannel import PeerTransport
from signalling.session import Session

AiohttpClient = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]
GatewayFactory = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]
Ollama = tuple[FakeOllama, str]  # the ollama fixture: its state and base URL


class EngineCache:
    """Loads each engine once per test run, on first use (seconds each)."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir
        self._engines: dict[str, ASREngine] = {}
        self._piper: TTSEngine | None = None

    def piper(self) -> TTSEngine:
        """The offline default voice (en_US-joe-medium), loaded once."""
        if self._piper is None:
            self._piper = PiperEngine(cache_dir=self._cache_dir)
        return self._piper

    def get(self, name: str) -> ASREngine:
        if name not in self._engines:
            self._engines[name] = load_engine(name, "tiny.en", "cpu", self._cache_dir)
        return self._engines[name]


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def gateway(aiohttp_client: AiohttpClient, engines: EngineCache) -> GatewayFactory:
    """``await gateway(engine="faster-whisper", max_sessions=2)`` → a TestClient. Spoken
    replies are off unless asked for: ``speak=True`` (the offline Piper voice) or a
    ``tts_engine``."""

    async def make(
        engine: str = "openai-whisper", *, speak: bool = False, **overrides: object
    ) -> TestClient:  # type: ignore[type-arg]
        overrides.setdefault("tts_engine", "piper" if speak else "none")
        # A test asks for admission by capacity itself: on this busy machine it would
        # otherwise refuse other tests' sessions for the CPU the whole suite uses.
        overrides.setdefault("admission", "off")
        config = Config(asr_engine=engine, no_tls=True, **overrides)  # type: ignore[arg-type]
        tts = engines.piper() if speak else None
        return await aiohttp_client(build_app(config, engine=engines.get(engine), tts=tts))

    return make


async def connect(client: TestClient) -> tuple[LoopbackClient, str]:  # type: ignore[type-arg]
    """A connected loopback peer and its session id, after ``session.ready``."""
    peer = LoopbackClient()
    response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert response.headers["Location"] == f"/sessions/{answer['session_id']}"
    await peer.accept(answer)
    ready = await peer.next_event("session.ready", within=10)
    assert ready["session_id"] == answer["session_id"]
    return peer, answer["session_id"]


def peer_connection(session: Session) -> RTCPeerConnection:
    """The gateway side of a WebRTC session."""
    assert isinstance(session.transport, PeerTransport), session
    return session.transport.pc


@pytest.fixture
async def ollama() -> AsyncIterator[Ollama]:
    """An Ollama-compatible server on 127.0.0.1 speaking the real wire format."""
    async with fake_ollama() as (state, url):
        yield state, url


@pytest.fixture(autouse=True)
def fresh_mdns_resolver() -> Iterator[None]:
    """aioice keeps its mDNS resolver (for a browser's ``.local`` candidates) in a
    thread-local, with an ``asyncio.Lock`` bound to the first event loop that waits on it.
    The gateway runs one loop; pytest gives every test its own, so after one test had two
    lookups at once, a later test's offer failed with "bound to a different event loop".
    Each test starts without it (the loop that owned it, and its socket, are gone)."""
    yield
    state = aioice.ice._mdns
    for name in ("lock", "protocol", "subscribers"):
        if hasattr(state, name):
            delattr(state, name)
