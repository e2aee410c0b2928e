"""Speech recognition in another process: a server of OpenAI's transcription API.

The gateway's own ``local-ai-gateway asr-server`` (one model shared by every worker and
replica on a machine), or a third-party one (vLLM serving Whisper, Speaches). Reached over
a Unix socket (``unix:/path``) or HTTP(S). :class:`RemoteASR` is a
:class:`media.asr.service.Recogniser`: sessions cannot tell it from the in-process one.

The server orders the work (priorities and deadlines travel as headers); here only the
number of requests in flight is bounded, so that a slow server is not sent speech nobody
will wait for. A server that is down or restarting fails each request at once with
:class:`ASRUnavailable`; the next utterance tries again, so a restart loses no session.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

import aiohttp

from media import Float32Array
from media.asr import wire
from media.asr.base import Transcription
from media.asr.service import Priority
from media.errors import (
    ASRBusyError,
    ASRError,
    ASRStaleError,
    ASRUnavailable,
    UnsupportedLanguage,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0  # a local or LAN server accepts in milliseconds
INFO_TIMEOUT_S = 3.0  # GET /v1/models, at start-up and for /ready
_MAX_ERROR_CHARS = 300  # of a server's error message, in ours
MAX_ANSWER_BYTES = 1 << 20  # 30 s of speech is a few hundred bytes of JSON


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: ``base`` is the API root (``…/v1``); with ``socket``, the HTTP
    goes over that Unix socket and the host in ``base`` is only a name."""

    base: str
    socket: str | None = None

    @property
    def loopback(self) -> bool:
        """On this machine: a Unix socket, ``localhost`` or a loopback address."""
        if self.socket is not None:
            return True
        host = urlsplit(self.base).hostname or ""
        if host == "localhost":
            return True
        try:
            return ip_address(host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"unix:{self.socket}" if self.socket is not None else self.base


def parse_asr_url(text: str) -> Endpoint:
    """``unix:/run/gateway/asr.sock``, or ``http(s)://host[:port][/v1]`` (the API root, as
    OpenAI clients take it; ``/v1`` is added when missing). Raises ValueError."""
    value = text.strip()
    if value.startswith("unix:"):
        path = value.removeprefix("unix:")
        path = path.removeprefix("//") if path.startswith("///") else path
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path.sock, got {text!r}")
        return Endpoint("http://localhost/v1", socket=path)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://host:port, https://… or unix:/path.sock, got {text!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"expected a plain URL (no credentials, query or fragment), got {text!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return Endpoint(f"{parts.scheme}://{parts.netloc}{path}")


@dataclass(frozen=True)
class RemoteModel:
    """A :class:`media.asr.base.ModelInfo` for what the server says it runs."""

    name: str
    model: str
    device: str
    languages: frozenset[str]


def model_from_listing(listing: object, model: str) -> RemoteModel:
    """What ``GET /v1/models`` says about ``model`` (or, if it lists no such id, the only
    model it serves). The gateway's ASR server adds ``engine``, ``device`` and
    ``languages`` to each entry; for other servers the device is ``remote`` and the
    languages are unknown (empty: the server decides), except for an English-only ``.en``
    model. Raises ValueError when the listing is not OpenAI's shape."""
    data = listing.get("data") if isinstance(listing, Mapping) else None
    if not isinstance(data, list) or not all(isinstance(m, Mapping) for m in data):
        raise ValueError("expected {'data': [{'id': …}, …]}")
    entries = [m for m in data if m.get("id") == model] or (data if len(data) == 1 else [])
    entry: Mapping[str, object] = entries[0] if entries else {}
    languages = entry.get("languages")
    named = str(entry.get("id", model))
    return RemoteModel(
        name=str(entry.get("engine", "remote")),
        model=named,
        device=str(entry.get("device", "remote")),
        languages=(
            frozenset(str(code) for code in languages)
            if isinstance(languages, list)
            else frozenset({"en"})
            if named.endswith(".en")
            else frozenset()
        ),
    )


class RemoteASR:
    """Transcriptions from an ASR server; see the module's docstring. Belongs to the event
    loop that calls :meth:`start`."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        model: str,
        max_pending: int = 16,
        timeout_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending {max_pending}: need >= 1")
        self.endpoint = endpoint
        self._model = model
        self._max_pending = max_pending
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)
        )
        self._timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._info = model_from_listing({"data": []}, model)
        self._http: aiohttp.ClientSession | None = None
        self._in_flight: Counter[Priority] = Counter()
        self.reachable = False  # at the last request or check

    @property
    def engine(self) -> RemoteModel:
        return self._info

    @property
    def pending(self) -> int:
        return self._in_flight.total()

    @property
    def idle(self) -> bool:
        return self.pending == 0

    @property
    def urgent_pending(self) -> int:
        return self._in_flight[Priority.FINAL] + self._in_flight[Priority.EARLY]

    async def start(self) -> None:
        """Opens the connection pool and asks the server what it runs; a server that is
        not up yet is only logged (requests fail with ``asr_unavailable`` until it is)."""
        if self._http is None:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self.endpoint.socket, limit=self._max_pending + 1)
                if self.endpoint.socket is not None
                else aiohttp.TCPConnector(limit=self._max_pending + 1)
            )
            # One connection more than requests: /ready's check never waits behind them.
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        problem = await self.check()
        if problem is not None:
            logger.warning("ASR server: %s", problem)

    async def check(self) -> str | None:
        """Refreshes what the server runs; None when it answered, else what is wrong."""
        http = self._session()
        try:
            async with http.get(
                f"{self.endpoint.base}/models", timeout=aiohttp.ClientTimeout(total=INFO_TIMEOUT_S)
            ) as response:
                status = response.status
                listing = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.reachable = False
            return f"cannot reach {self.endpoint}: {_describe(exc)}; {_HINT}"
        if status != 200:
            self.reachable = False
            return f"{self.endpoint} answered GET /v1/models with {status}; is it an ASR server?"
        try:
            self._info = model_from_listing(listing, self._model)
        except ValueError as exc:
            self.reachable = False
            return f"{self.endpoint} lists its models oddly ({exc}); is it an ASR server?"
        self.reachable = True
        return None

    async def busy_seconds(self) -> float | None:
        """What the gateway's own ASR server says in ``/health`` (other servers: None)."""
        http = self._session()
        root = self.endpoint.base.removesuffix("/v1")
        try:
            async with http.get(
                f"{root}/health", timeout=aiohttp.ClientTimeout(total=INFO_TIMEOUT_S)
            ) as response:
                body = await response.json(content_type=None) if response.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        busy = body.get("busy_s") if isinstance(body, dict) else None
        return float(busy) if isinstance(busy, int | float) else None

    async def transcribe(
        self,
        audio: Float32Array,
        language: str | None,
        *,
        priority: Priority = Priority.FINAL,
        deadline_s: float | None = None,
    ) -> Transcription:
        if self.pending >= self._max_pending:
            raise ASRBusyError(
                f"speech recogniser busy: {self.pending} utterances at the ASR server"
            )
        form = aiohttp.FormData()
        form.add_field("file", wire.encode_wav(audio), filename="speech.wav",
                       content_type="audio/wav")  # fmt: skip
        form.add_field("model", self._info.model)
        form.add_field("response_format", "verbose_json")
        if language:
            form.add_field("language", language)
        headers = {wire.PRIORITY_HEADER: priority.name.lower()}
        if deadline_s is not None:
            headers[wire.DEADLINE_HEADER] = str(max(1, round(deadline_s * 1000)))
        self._in_flight[priority] += 1
        try:
            return await self._post(form, headers)
        finally:
            self._in_flight[priority] -= 1

    async def _post(self, form: aiohttp.FormData, headers: dict[str, str]) -> Transcription:
        http = self._session()
        try:
            async with http.post(
                f"{self.endpoint.base}{wire.PATH.removeprefix('/v1')}", data=form, headers=headers
            ) as response:
                # A transcription is small; a server sending more is not one of these.
                body = await read_at_most(response.content, MAX_ANSWER_BYTES + 1)
                status, kind = response.status, response.content_type
        except TimeoutError as exc:
            raise ASRUnavailable(
                f"the ASR server at {self.endpoint} did not answer in {self._timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            self.reachable = False
            raise ASRUnavailable(
                f"cannot reach {self.endpoint}: {_describe(exc)}; {_HINT}"
            ) from exc
        self.reachable = True
        if len(body) > MAX_ANSWER_BYTES:
            raise ASRError(f"the ASR server at {self.endpoint} answered with over 1 MiB")
        if status == 200:
            return _answer(body, kind, self.endpoint)
        raise error_from_answer(status, body, self.endpoint)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise ASRError("the ASR client is not started")
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


_HINT = "start it (local-ai-gateway asr-server) or correct --asr-url"


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes: ``read(n)`` alone returns what has
    arrived so far, which for an answer sent in pieces (chunked, a proxy) is a part."""
    body = bytearray()
    while len(body) < limit:
        piece = await stream.read(limit - len(body))
        if not piece:
            break
        body += piece
    return bytes(body)


def _answer(body: bytes, content_type: str, endpoint: Endpoint) -> Transcription:
    if content_type.startswith("text/"):
        text = body.decode("utf-8", "replace")
        return wire.transcription_from_json({"text": text})
    try:
        return wire.transcription_from_json(json.loads(body))
    except ValueError as exc:
        raise ASRError(f"the ASR server at {endpoint} sent an answer that is not a "
                       f"transcription: {exc}") from exc  # fmt: skip


def error_from_answer(status: int, body: bytes, endpoint: Endpoint) -> ASRError:
    """An error answer as one of ours: busy and stale keep their meaning (and
    retryability), a language the model lacks stays ``unsupported_language``."""
    code, message = _error_fields(body)
    where = f"the ASR server at {endpoint} answered {status}"
    if status in (429, 503):
        kind: type[ASRError] = ASRStaleError if code == ASRStaleError.code else ASRBusyError
        return kind(f"{where}: {message}")
    if code == UnsupportedLanguage.code:
        return UnsupportedLanguage(message)
    if status in (401, 403):
        return ASRError(
            f"{where}: it refused the gateway's credentials; give its API key with "
            "--asr-api-key-file"
        )
    if status in (502, 504):
        return ASRUnavailable(f"{where}: {message}")
    return ASRError(f"{where}: {message}")


def _error_fields(body: bytes) -> tuple[str, str]:
    """OpenAI's ``{"error": {"code", "message"}}`` (ours too), else the body's start."""
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, Mapping):
            return str(error.get("code") or ""), str(error.get("message") or "")[:_MAX_ERROR_CHARS]
    return "", body[:_MAX_ERROR_CHARS].decode("utf-8", "replace").strip() or "(no message)"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
