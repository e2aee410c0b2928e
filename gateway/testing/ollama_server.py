"""An Ollama-compatible HTTP server for tests and benchmarks (no model behind it).

No Ollama can run on the test machines, so the gateway's real ``ollama.AsyncClient`` talks
to this instead. It speaks Ollama's wire format as the real server (0.12) writes it:

- ``POST /api/chat``: streamed as ``application/x-ndjson``, one JSON object per line, each
  ``{"model", "created_at", "message": {"role": "assistant", "content": piece}, "done": false}``
  and a last line with ``"done": true``, ``done_reason`` and the timing counters; with
  ``"stream": false``, one ``application/json`` object holding the whole answer. Empty
  ``messages`` loads the model (``done_reason`` "load", or "unload" with ``keep_alive`` 0).
- ``GET /api/tags``, ``POST /api/show``, ``GET /api/version``, ``GET /`` ("Ollama is running").
- Errors as Ollama sends them: ``{"error": "..."}`` with 400 (bad JSON, no model), 404
  (``model 'NAME' not found``), 500; a failure after the first piece arrives as an
  ``{"error": ...}`` line inside a 200 stream, which is what the real server does.

The answer is deterministic: ``reply`` applied to the last user message, split into
word-sized pieces (a word and the whitespace after it), one line per piece. A test steers
the server at run time through the :class:`FakeOllama` it gets back (delays, faults, the
model list) and reads what the gateway sent from ``state.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

Mode = Literal["normal", "stall", "break", "error_line", "http_error"]
Reply = str | Callable[[str], str]

OLLAMA_VERSION = "0.12.0"
HOST = "127.0.0.1"  # never reachable from another machine
_POLL_S = 0.02  # how often a waiting handler checks whether its client is still there
_SHUTDOWN_TIMEOUT_S = 2.0  # bound on stop(): handlers still running then are cancelled
_MODIFIED_AT = "2025-09-18T10:20:30.123456789+02:00"  # Go's RFC 3339 with nanoseconds
_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "3.2B",
    "quantization_level": "Q4_K_M",
}


def echo_reply(text: str) -> str:
    return f"You said: {text}. That is all."


@dataclass
class FakeOllama:
    """What the server does, changeable while it runs; and what it was asked.

    ``mode`` picks a fault for chats that start after it is set. "stall", "break" and
    "error_line" first send ``break_after`` pieces (all of a shorter answer, but never the
    final line), then: "stall" sends nothing more until
    the client leaves, the server stops, or ``stall_max_s`` passes; "break" closes the
    connection without the final line (a crashed Ollama); "error_line" sends
    ``{"error": error_message}`` and ends the stream. "http_error" answers every chat with
    ``error_status`` and ``{"error": error_message}`` before any piece.
    """

    models: list[str] = field(default_factory=lambda: ["llama3.2:latest"])
    first_token_delay_s: float = 0.0  # before the response headers, as a loading model
    token_interval_s: float = 0.0  # between pieces
    mode: Mode = "normal"
    break_after: int = 3
    stall_max_s: float = 30.0  # a stalled handler never outlives this
    error_message: str = "llama runner process has terminated: exit status 2"
    error_status: int = 500
    reply: Reply = echo_reply
    version: str = OLLAMA_VERSION
    # Every parsed /api/chat body, newest last; bounded so a benchmark cannot grow it.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))
    calls: Counter[str] = field(default_factory=Counter)  # "GET /api/tags" → count
    active_streams: int = 0  # chat responses being written now
    client_disconnects: int = 0  # chats whose client left before the last line

    def find_model(self, name: str) -> str | None:
        """The available model ``name`` refers to, as Ollama resolves it, or None."""
        wanted = canonical_model_name(name)
        for model in self.models:
            if canonical_model_name(model) == wanted:
                return model
        return None

    def pieces_for(self, messages: list[Any]) -> list[str]:
        text = last_user_text(messages)
        answer = self.reply if isinstance(self.reply, str) else self.reply(text)
        return split_pieces(answer)


FAKE_OLLAMA = web.AppKey("fake_ollama", FakeOllama)
_STOPPING = web.AppKey("fake_ollama_stopping", asyncio.Event)


def canonical_model_name(name: str) -> str:
    """Ollama's matching: case-insensitive, default registry and ``:latest`` implied."""
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def split_pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\S+\s*", text)
    lead = text[: len(text) - len(text.lstrip())]
    if not pieces:
        return [text] if text else []
    pieces[0] = lead + pieces[0]
    return pieces


def _now() -> str:
    # Go marshals time.Now().UTC() as RFC 3339 with a "Z".
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(name: str) -> str:
    return hashlib.sha256(canonical_model_name(name).encode()).hexdigest()


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _chunk(model: str, content: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
        "done": False,
    }


def _final(
    model: str, content: str, reason: str, started_ns: int, prompt_words: int, count: int
) -> dict[str, Any]:
    total = time.perf_counter_ns() - started_ns
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
        "done_reason": reason,
        "done": True,
        "total_duration": total,
        "load_duration": min(total, 1_000_000),
        "prompt_eval_count": prompt_words,
        "prompt_eval_duration": total // 10,
        "eval_count": count,
        "eval_duration": total - total // 10,
    }


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait(request: web.Request, seconds: float) -> bool:
    """Sleeps ``seconds``; False at once if the server is stopping or the client left."""
    stopping = request.app[_STOPPING]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, 0.0)
    while True:
        if stopping.is_set() or _client_gone(request):
            return False
        left = deadline - loop.time()
        if left <= 0:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(left, _POLL_S))


def _cut(request: web.Request) -> None:
    # close() flushes what was written, then FIN without the chunked terminator: the
    # client reads the pieces so far, then an incomplete body, as when Ollama crashes.
    if request.transport is not None:
        request.transport.close()


async def _read_json(request: web.Request) -> tuple[dict[str, Any] | None, str]:
    raw = await request.read()
    if not raw.strip():
        return None, "missing request body"
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(body, dict):
        return None, "json: cannot unmarshal into Go value of type api.ChatRequest"
    return body, ""


@web.middleware
async def _count_calls(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request.app[FAKE_OLLAMA].calls[f"{request.method} {request.path}"] += 1
    return await handler(request)


async def _root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[FAKE_OLLAMA].version})


async def _tags(request: web.Request) -> web.Response:
    models = []
    for name in request.app[FAKE_OLLAMA].models:
        full = canonical_model_name(name)
        models.append(
            {
                "name": full,
                "model": full,
                "modified_at": _MODIFIED_AT,
                "size": 2_019_393_189,
                "digest": _digest(name),
                "details": dict(_DETAILS),
            }
        )
    return web.json_response({"models": models})


async def _show(request: web.Request) -> web.Response:
    body, problem = await _read_json(request)
    if body is None:
        return _error(400, problem)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        return _error(400, "model is required")
    if request.app[FAKE_OLLAMA].find_model(name) is None:
        return _error(404, f"model '{name}' not found")
    return web.json_response(
        {
            "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
            "modelfile": f"# Modelfile generated by fake Ollama\nFROM {name}\n",
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": dict(_DETAILS),
            "model_info": {
                "general.architecture": "llama",
                "general.parameter_count": 3_212_749_888,
                "llama.context_length": 131_072,
            },
            "capabilities": ["completion", "tools"],
            "modified_at": _MODIFIED_AT,
        }
    )


def _wants_unload(keep_alive: Any) -> bool:
    return keep_alive in (0, 0.0, "0", "0s", "0m")


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_OLLAMA]
    started = time.perf_counter_ns()
    body, problem = await _read_json(request)
    if body is None:
        return _error(400, problem)
    state.requests.append(body)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        return _error(400, "model is required")
    if state.find_model(name) is None:
        return _error(404, f"model '{name}' not found")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        return _error(400, "json: cannot unmarshal into Go struct field messages")
    if not messages:  # Ollama's way to load (or unload) a model without generating
        reason = "unload" if _wants_unload(body.get("keep_alive")) else "load"
        return web.json_response(
            {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": reason,
                "done": True,
            }
        )
    mode = state.mode  # fixed for this chat, whatever the test changes meanwhile
    if mode == "http_error":
        return _error(state.error_status, state.error_message)

    pieces = state.pieces_for(messages)
    reason = "stop"
    options = body.get("options")
    limit = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(limit, int) and 0 <= limit < len(pieces):
        pieces, reason = pieces[:limit], "length"
    prompt_words = sum(
        len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)
    )
    final = (name, reason, started, prompt_words, len(pieces))
    if body.get("stream", True) is False:
        return await _whole(request, state, mode, pieces, final)
    return await _stream(request, state, mode, pieces, final)


async def _whole(
    request: web.Request,
    state: FakeOllama,
    mode: Mode,
    pieces: list[str],
    final: tuple[str, str, int, int, int],
) -> web.StreamResponse:
    """``"stream": false``: the real server answers only once generation has finished."""
    name, reason, started, prompt_words, count = final
    generating = state.first_token_delay_s + state.token_interval_s * max(count - 1, 0)
    if mode == "stall":
        await _wait(request, state.stall_max_s)
        _cut(request)
        return web.Response()  # never reaches the client: the connection is gone
    if not await _wait(request, generating):
        _cut(request)
        return web.Response()
    if mode == "break":
        _cut(request)
        return web.Response()
    if mode == "error_line":  # before headers, Ollama turns the error into a status
        return _error(state.error_status, state.error_message)
    content = "".join(pieces)
    return web.json_response(_final(name, content, reason, started, prompt_words, count))


async def _stream(
    request: web.Request,
    state: FakeOllama,
    mode: Mode,
    pieces: list[str],
    final: tuple[str, str, int, int, int],
) -> web.StreamResponse:
    name, reason, started, prompt_words, count = final
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    # A fault replaces the final line even when the answer is shorter than break_after.
    fault_at = None if mode == "normal" else min(max(state.break_after, 0), len(pieces))
    client_left = False

    async def send(obj: dict[str, Any]) -> None:
        if not response.prepared:  # like Go, headers go out with the first line
            await response.prepare(request)
        await response.write(_line(obj))

    def abandon() -> web.StreamResponse:
        nonlocal client_left
        client_left = _client_gone(request)
        _cut(request)
        return response

    state.active_streams += 1
    try:
        if not await _wait(request, state.first_token_delay_s):
            return abandon()
        for index, piece in enumerate(pieces):
            if index == fault_at:
                break
            if index and not await _wait(request, state.token_interval_s):
                return abandon()
            await send(_chunk(name, piece))
        if fault_at is None:
            await send(_final(name, "", reason, started, prompt_words, count))
            return response
        if mode == "error_line":
            if not response.prepared:  # nothing sent yet: Ollama answers with a status
                return _error(state.error_status, state.error_message)
            await send({"error": state.error_message})
            return response
        if mode == "stall":
            if not response.prepared:
                await response.prepare(request)
            await _wait(request, state.stall_max_s)
        return abandon()  # "break", or a stall ended by the client, a stop or its limit
    except ConnectionError:  # the client went away while we wrote
        client_left = True
        return response
    finally:
        state.active_streams -= 1
        if client_left:
            state.client_disconnects += 1


def make_app(state: FakeOllama | None = None) -> web.Application:
    """The application alone, for ``aiohttp_server`` or an existing runner."""
    app = web.Application(middlewares=[_count_calls])
    app[FAKE_OLLAMA] = state if state is not None else FakeOllama()
    app[_STOPPING] = asyncio.Event()

    async def wake_waiters(app: web.Application) -> None:
        # Runs before the runner waits on open handlers: stalls and delays end now.
        app[_STOPPING].set()

    app.on_shutdown.append(wake_waiters)
    app.router.add_get("/", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/tags", _tags)
    app.router.add_post("/api/show", _show)
    app.router.add_post("/api/chat", _chat)
    return app


async def start_fake_ollama(
    port: int = 0, state: FakeOllama | None = None
) -> tuple[FakeOllama, str, Callable[[], Awaitable[None]]]:
    """Serves on 127.0.0.1 → (state, base URL, stop).

    ``stop()`` ends open streams as a crash would (the client sees a broken stream) and
    returns within a couple of seconds; calling it again does nothing. To bring "Ollama"
    back, call this again with the same ``port`` (and the same ``state`` to keep it).
    """
    app = make_app(state)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await runner.cleanup()

    return app[FAKE_OLLAMA], f"http://{HOST}:{bound}", stop


@contextlib.asynccontextmanager
async def fake_ollama(
    port: int = 0, state: FakeOllama | None = None
) -> AsyncIterator[tuple[FakeOllama, str]]:
    """``async with fake_ollama() as (state, url): ...``; stopped on exit."""
    state, url, stop = await start_fake_ollama(port, state)
    try:
        yield state, url
    finally:
        await stop()
