"""A speech server out of process, through OpenAI's ``POST /v1/audio/speech``.

Speaches, Kokoro-FastAPI, LocalAI and OpenAI itself answer it. We ask for
``response_format: "pcm"`` (raw 16-bit little-endian mono at 24 kHz, no header) and read
the body as it streams, so the first words play while the server is still speaking the
rest. The client is synchronous: ``synthesize`` runs in a worker thread.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from media import Int16Array
from media.errors import TTSError, TTSUnavailable, TTSVoiceMissing
from media.tts.base import skip_leading_silence

OPENAI_PCM_RATE = 24000  # what OpenAI documents for "pcm"; compatible servers follow it
_CONNECT_TIMEOUT_S = 2.0  # a local or LAN server answers a connect in milliseconds
_MAX_ERROR_BODY = 4096  # bytes of an error response worth reading
# What a server that ignored "pcm" (or a proxy's error page) sends; anything else is taken
# as PCM, since servers label it variously (audio/pcm, audio/L16, application/octet-stream).
_NOT_PCM = (
    "application/json",
    "text/",
    "audio/mpeg",
    "audio/mp3",
    "audio/wav",
    "audio/x-wav",
    "audio/ogg",
    "audio/opus",
    "audio/aac",
    "audio/flac",
)


class OpenAISpeechEngine:
    name = "openai"

    def __init__(
        self,
        url: str,
        model: str,
        voice: str,
        *,
        timeout_s: float = 30.0,
        sample_rate: int = OPENAI_PCM_RATE,
        api_key: str | None = None,
    ) -> None:
        base = url.rstrip("/")
        self._endpoint = (
            f"{base}/audio/speech" if base.endswith("/v1") else f"{base}/v1/audio/speech"
        )
        self._where = _without_credentials(self._endpoint)  # for messages and logs
        self.url = url
        self.model = model
        self.voice = voice
        self.sample_rate = sample_rate
        # Read timeout: the longest silence between two pieces of the body.
        self._timeout = httpx.Timeout(timeout_s, connect=min(_CONNECT_TIMEOUT_S, timeout_s))
        self._timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Built once: loading the CA bundle costs ~10 ms, and each call opens a client.
        self._ssl = ssl.create_default_context()

    def __repr__(self) -> str:  # never the API key
        return f"OpenAISpeechEngine({self._where!r}, model={self.model!r}, voice={self.voice!r})"

    voice_per_request = True  # the voice is a field of each request
    chunks_are_sentences = False  # network reads: looking ahead would hold a chunk back

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        return skip_leading_silence(self._stream(text, voice or self.voice), self.sample_rate)

    def _stream(self, text: str, voice: str) -> Iterator[Int16Array]:
        body = {"model": self.model, "input": text, "voice": voice, "response_format": "pcm"}
        # One client per call: nothing to close later, and a generator closed early (the
        # reply was interrupted) drops its connection, which tells the server to stop.
        try:
            with (
                httpx.Client(timeout=self._timeout, verify=self._ssl, trust_env=False) as client,
                client.stream("POST", self._endpoint, json=body, headers=self._headers) as reply,
            ):
                if reply.status_code >= 400:
                    raise self._refusal(reply.status_code, _read_some(reply))
                kind = reply.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if kind.startswith(_NOT_PCM):  # played as PCM it would be loud noise
                    raise TTSError(
                        f"speech server at {self._where} answered {kind}, not raw PCM: "
                        "it must support response_format pcm"
                    )
                odd = b""  # a sample split across two reads
                for data in reply.iter_bytes():
                    data = odd + data
                    cut = len(data) - len(data) % 2
                    odd = data[cut:]
                    if cut:
                        yield np.frombuffer(data[:cut], dtype="<i2").astype(np.int16)
        except httpx.ConnectTimeout as exc:
            raise TTSUnavailable(
                f"speech server at {self._where} did not accept a connection within "
                f"{self._timeout.connect:g} s: start it, or check --tts-url"
            ) from exc
        except httpx.TimeoutException as exc:
            raise TTSUnavailable(
                f"speech server at {self._where} sent nothing for {self._timeout_s:g} s: "
                "check that it is working and not overloaded, or raise the TTS timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TTSUnavailable(
                f"cannot reach the speech server at {self._where} ({type(exc).__name__}: "
                f"{exc}): start it, or check --tts-url"
            ) from exc

    def _refusal(self, status: int, detail: str) -> TTSError:
        said = f"speech server at {self._where} answered {status}: {detail}"
        named = "voice" in detail.lower() or "model" in detail.lower()
        if status == 404 or (status in (400, 422) and named):
            return TTSVoiceMissing(
                f"{said}; check --tts-voice ({self.voice!r}) and --tts-model ({self.model!r}) "
                "against the voices and models that server has"
            )
        if status in (401, 403):
            return TTSUnavailable(f"{said}; check the API key the gateway sends")
        if status >= 500 or status == 429:
            return TTSUnavailable(f"{said}; check the speech server's log")
        return TTSError(said)


def _read_some(reply: httpx.Response) -> str:
    """The error a server explains, in one line: OpenAI's ``{"error": {"message"}}``,
    FastAPI's ``{"detail"}``, or the text itself."""
    raw = b""
    try:
        for data in reply.iter_bytes():
            raw += data
            if len(raw) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # what arrived is enough to explain
    text = raw[:_MAX_ERROR_BODY].decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail"))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = error if isinstance(error, str) else json.dumps(error)
    return " ".join(text.split())[:300] or "(no detail)"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
