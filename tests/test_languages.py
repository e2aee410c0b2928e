"""The session's language: checked against what the loaded model can transcribe, refused
with a clear 400 or ``error`` event, and passed to the recogniser when accepted."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.app import build_app
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient, load_clips
from media import Float32Array
from media.asr.base import ASREngine, Transcription, check_language, transcribe_each
from media.errors import UnsupportedLanguage
from tests.conftest import AiohttpClient, EngineCache, GatewayFactory
from tests.test_conversation import ws_session

ENGLISH = frozenset({"en"})
MANY = frozenset({"en", "de", "fr", "ja"})


def test_detection_and_supported_languages_pass() -> None:
    check_language(None, ENGLISH, "tiny.en")
    check_language("en", ENGLISH, "tiny.en")
    check_language("de", MANY, "small")


def test_an_english_only_model_says_so() -> None:
    with pytest.raises(UnsupportedLanguage, match=r"English-only.*'de'.*multilingual"):
        check_language("de", ENGLISH, "tiny.en")


def test_an_unknown_code_names_real_ones() -> None:
    with pytest.raises(UnsupportedLanguage, match="'xx' is not a language model small knows"):
        check_language("xx", MANY, "small")


@pytest.mark.parametrize("name", ["openai-whisper", "faster-whisper"])
def test_the_offline_model_is_english_only(engines: EngineCache, name: str) -> None:
    assert engines.get(name).languages == ENGLISH


@pytest.mark.parametrize(("language", "message"), [("xx", "English-only"), ("de", "English-only")])
async def test_an_offer_in_a_language_the_model_lacks_is_400(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, language: str, message: str
) -> None:
    made: list[object] = []
    monkeypatch.setattr("gateway.http.webrtc.new_peer_connection", lambda *a: made.append(a))
    client = await gateway()
    peer = LoopbackClient()
    try:
        response = await client.post(
            "/offer",
            json={"sdp": await peer.offer(), "type": "offer", "session": {"language": language}},
        )
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "unsupported_language"
        assert message in error["message"]
        assert made == []  # refused before any peer connection exists
    finally:
        await peer.close()


async def test_session_update_in_a_language_the_model_lacks_is_an_error_event(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    peer = await ws_session(client)
    await peer.ws.send_str(json.dumps({"type": "session.update", "language": "de"}))
    error = await peer.next("error")
    assert error["code"] == "unsupported_language"
    assert "English-only" in error["message"]
    await peer.ws.send_str(json.dumps({"type": "ping", "id": 1}))
    assert (await peer.next("pong"))["id"] == 1  # the session goes on


class Recording:
    """The real engine, remembering the language of every call."""

    def __init__(self, engine: ASREngine) -> None:
        self.inner = engine
        self.name, self.model, self.device = engine.name, engine.model, engine.device
        self.languages = engine.languages
        self.calls: list[str | None] = []

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        self.calls.append(language)
        return self.inner.transcribe(audio, language)

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        return transcribe_each(self, audios, language)


async def test_the_offers_language_reaches_the_recogniser(
    aiohttp_client: AiohttpClient, engines: EngineCache
) -> None:
    engine = Recording(engines.get("openai-whisper"))
    client: TestClient = await aiohttp_client(  # type: ignore[type-arg]
        build_app(Config(no_tls=True, tts_engine="none", admission="off"), engine=engine)
    )
    peer = LoopbackClient()
    try:
        response = await client.post(
            "/offer",
            json={"sdp": await peer.offer(), "type": "offer", "session": {"language": "en"}},
        )
        assert response.status == 200, await response.text()
        await peer.accept(await response.json())
        await peer.next_event("session.ready", within=10)
        _, audio = load_clips()[0]
        peer.mic.play(audio)
        final = await peer.next_event("transcript.final")
        assert final["text"]
        assert engine.calls
        assert set(engine.calls) == {"en"}
    finally:
        await peer.close()
