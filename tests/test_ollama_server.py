"""The fake Ollama driven by the real ``ollama.AsyncClient``: the wire format it parses, and
the exception each failure mode raises in it (which the gateway's error handling relies on).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import pytest

from gateway.testing.ollama_server import (
    FakeOllama,
    fake_ollama,
    split_pieces,
    start_fake_ollama,
)

Served = tuple[FakeOllama, str]
USER = [{"role": "user", "content": "hello world"}]
ANSWER = "You said: hello world. That is all."
TIMEOUT = httpx.Timeout(5.0)  # no request in this file may hang the run


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with fake_ollama() as (state, url):
        yield state, url


@pytest.fixture
async def client(served: Served) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=served[1], timeout=TIMEOUT) as c:
        yield c


async def collect(client: ollama.AsyncClient, into: list[Any], **kwargs: Any) -> None:
    """Streams one chat into ``into`` (so a test sees what arrived before an error)."""
    kwargs.setdefault("model", "llama3.2")
    kwargs.setdefault("messages", USER)
    async for part in await client.chat(stream=True, **kwargs):
        into.append(part)


async def eventually(check: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_pieces_are_words_with_their_spaces() -> None:
    assert split_pieces(ANSWER) == ["You ", "said: ", "hello ", "world. ", "That ", "is ", "all."]
    assert "".join(split_pieces("  two  words ")) == "  two  words "
    assert split_pieces("") == []


async def test_streamed_chat_yields_pieces_in_order_then_done(
    served: Served, client: ollama.AsyncClient
) -> None:
    state, _ = served
    parts: list[Any] = []
    await collect(client, parts, options={"temperature": 0.2}, keep_alive="30m")

    *pieces, last = parts
    assert [p.message.content for p in pieces] == split_pieces(ANSWER)
    assert all(p.message.role == "assistant" and p.done is False for p in pieces)
    assert all(p.model == "llama3.2" and p.created_at for p in parts)
    assert last.done is True
    assert last.done_reason == "stop"
    assert last.message.content == ""
    assert last.eval_count == len(pieces)
    assert last.total_duration is not None
    assert last.total_duration > 0
    # What the client sent is recorded as it arrived.
    sent = state.requests[-1]
    assert sent["messages"] == USER
    assert sent["options"] == {"temperature": 0.2}
    assert sent["keep_alive"] == "30m"
    assert sent["stream"] is True
    assert state.active_streams == 0
    assert state.client_disconnects == 0


async def test_non_streamed_chat_answers_in_one_object(
    served: Served, client: ollama.AsyncClient
) -> None:
    state, _ = served
    whole = await client.chat(model="llama3.2:latest", messages=USER)
    assert whole.message.content == ANSWER
    assert whole.done is True
    assert whole.done_reason == "stop"

    state.reply = "Fixed text."
    assert (await client.chat(model="llama3.2", messages=USER)).message.content == "Fixed text."
    state.reply = str.upper
    assert (await client.chat(model="llama3.2", messages=USER)).message.content == "HELLO WORLD"


async def test_wire_format_is_ndjson_lines(served: Served) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as raw:
        body = {"model": "llama3.2", "messages": USER}  # stream defaults to true
        streamed = await raw.post("/api/chat", json=body)
        whole = await raw.post("/api/chat", json={**body, "stream": False})
        version = await raw.get("/api/version")
        root = await raw.get("/")
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert len(lines) == len(split_pieces(ANSWER)) + 1
    assert lines[0]["message"] == {"role": "assistant", "content": "You "}
    assert set(lines[-1]) >= {"done_reason", "total_duration", "eval_count", "eval_duration"}
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["message"]["content"] == ANSWER
    assert version.json() == {"version": "0.12.0"}
    assert root.text == "Ollama is running"


async def test_bad_requests_get_ollama_errors(served: Served) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as raw:
        bad_json = await raw.post("/api/chat", content=b"{not json")
        empty = await raw.post("/api/chat", content=b"")
        no_model = await raw.post("/api/chat", json={"messages": USER})
    assert bad_json.status_code == 400
    assert "error" in bad_json.json()
    assert empty.json() == {"error": "missing request body"}
    assert no_model.status_code == 400
    assert no_model.json() == {"error": "model is required"}


async def test_list_and_show(served: Served, client: ollama.AsyncClient) -> None:
    state, _ = served
    listing = await client.list()
    assert [m.model for m in listing.models] == ["llama3.2:latest"]
    model = listing.models[0]
    assert model.modified_at is not None
    assert model.size
    assert model.digest
    assert model.details is not None
    assert model.details.family == "llama"

    shown = await client.show("llama3.2")
    assert shown.details is not None
    assert shown.capabilities == ["completion", "tools"]

    state.models = ["qwen2.5:0.5b", "llama3.2"]
    names = [m.model for m in (await client.list()).models]
    assert names == ["qwen2.5:0.5b", "llama3.2:latest"]  # tags always shown


async def test_unknown_model_is_404_response_error(
    served: Served, client: ollama.AsyncClient
) -> None:
    with pytest.raises(ollama.ResponseError) as streamed:
        await collect(client, [], model="mistral")
    with pytest.raises(ollama.ResponseError) as whole:
        await client.chat(model="mistral", messages=USER)
    for caught in (streamed, whole):
        assert caught.value.status_code == 404
        assert caught.value.error == "model 'mistral' not found"
    with pytest.raises(ollama.ResponseError) as shown:
        await client.show("mistral")
    assert shown.value.status_code == 404
    # Ollama's own name matching: tag "latest" implied, case ignored.
    assert (await client.chat(model="LLAMA3.2:latest", messages=USER)).done


async def test_options_and_load_requests(served: Served, client: ollama.AsyncClient) -> None:
    cut = await client.chat(model="llama3.2", messages=USER, options={"num_predict": 2})
    assert cut.message.content == "You said: "
    assert cut.done_reason == "length"
    loaded = await client.chat(model="llama3.2", messages=[])
    assert loaded.done_reason == "load"
    unloaded = await client.chat(model="llama3.2", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"


async def test_delays_are_honoured(served: Served, client: ollama.AsyncClient) -> None:
    state, _ = served
    state.first_token_delay_s, state.token_interval_s = 0.15, 0.02
    started = time.monotonic()
    arrivals: list[float] = []
    async for _ in await client.chat(model="llama3.2", messages=USER, stream=True):
        arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.15
    # The server waits between pieces (not before the final line); only lower bounds
    # hold on a loaded machine.
    assert arrivals[-1] >= 0.15 + 0.02 * (len(arrivals) - 2)


async def test_break_mode_raises_remote_protocol_error(
    served: Served, client: ollama.AsyncClient
) -> None:
    state, _ = served
    state.mode, state.break_after = "break", 2
    parts: list[Any] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        await collect(client, parts)
    assert [p.message.content for p in parts] == ["You ", "said: "]
    # An answer shorter than break_after still breaks instead of finishing.
    state.break_after = 100
    parts.clear()
    with pytest.raises(httpx.RemoteProtocolError):
        await collect(client, parts)
    assert [p.message.content for p in parts] == split_pieces(ANSWER)
    # Not streamed: the connection closes before any response.
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await client.chat(model="llama3.2", messages=USER)


async def test_error_line_raises_response_error(served: Served, client: ollama.AsyncClient) -> None:
    state, _ = served
    state.mode, state.break_after, state.error_message = "error_line", 1, "out of memory"
    parts: list[Any] = []
    with pytest.raises(ollama.ResponseError) as caught:
        await collect(client, parts)
    assert len(parts) == 1
    # A line inside a 200 stream carries no status: the client reports -1.
    assert caught.value.error == "out of memory"
    assert caught.value.status_code == -1

    state.break_after = 0  # before the first piece Ollama answers with a status instead
    with pytest.raises(ollama.ResponseError) as early:
        await collect(client, [])
    assert early.value.status_code == 500
    with pytest.raises(ollama.ResponseError) as whole:
        await client.chat(model="llama3.2", messages=USER)
    assert whole.value.status_code == 500


async def test_http_error_mode(served: Served, client: ollama.AsyncClient) -> None:
    state, _ = served
    state.mode, state.error_status = "http_error", 503
    with pytest.raises(ollama.ResponseError) as caught:
        await collect(client, [])
    assert caught.value.status_code == 503


async def test_stall_ends_with_client_timeout_and_server_notices(
    served: Served, client: ollama.AsyncClient
) -> None:
    state, _ = served
    state.mode, state.break_after = "stall", 1
    parts: list[Any] = []
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(collect(client, parts), 0.3)
    assert time.monotonic() - started < 1.0
    assert len(parts) == 1
    await eventually(lambda: state.active_streams == 0)
    assert state.client_disconnects == 1
    # Not streamed, a stalled answer never comes either.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.chat(model="llama3.2", messages=USER), 0.2)


async def test_stop_during_stall_breaks_the_stream_promptly() -> None:
    state, url, stop = await start_fake_ollama()
    try:
        state.mode, state.break_after = "stall", 0
        async with ollama.AsyncClient(host=url, timeout=TIMEOUT) as client:
            task = asyncio.create_task(collect(client, []))
            await eventually(lambda: state.active_streams == 1)
            started = time.monotonic()
            await stop()
            assert time.monotonic() - started < 1.0
            with pytest.raises(httpx.RemoteProtocolError):
                await asyncio.wait_for(task, 2.0)
    finally:
        await stop()  # idempotent


async def test_down_then_back_on_the_same_port() -> None:
    state, url, stop = await start_fake_ollama()
    port = urlsplit(url).port
    assert port is not None
    # One client across the outage, as the gateway keeps one: its pooled connection dies.
    async with ollama.AsyncClient(host=url, timeout=TIMEOUT) as client:
        assert (await client.chat(model="llama3.2", messages=USER)).done
        await stop()
        # Not streamed, the client turns a refused connection into the builtin
        # ConnectionError; streamed, httpx's ConnectError escapes unconverted.
        with pytest.raises(ConnectionError):
            await client.list()
        with pytest.raises(ConnectionError):
            await client.chat(model="llama3.2", messages=USER)
        with pytest.raises(httpx.ConnectError) as leaked:
            await collect(client, [])
        assert not isinstance(leaked.value, ConnectionError)

        again, url_again, stop_again = await start_fake_ollama(port=port, state=state)
        try:
            assert again is state
            assert url_again == url
            assert (await client.chat(model="llama3.2", messages=USER)).message.content == ANSWER
            parts: list[Any] = []
            await collect(client, parts)
            assert parts[-1].done
        finally:
            await stop_again()


async def test_context_manager_stops_the_server() -> None:
    async with fake_ollama() as (_, url), ollama.AsyncClient(host=url, timeout=TIMEOUT) as client:
        assert (await client.list()).models
    async with ollama.AsyncClient(host=url, timeout=TIMEOUT) as client:
        with pytest.raises(ConnectionError):
            await client.list()


def test_requests_are_bounded() -> None:
    state = FakeOllama()
    for i in range(1000):
        state.requests.append({"i": i})
    assert len(state.requests) == 256
    assert state.requests[-1] == {"i": 999}
