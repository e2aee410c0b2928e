"""``GET /sessions/<id>/events``: a session's events as Server-Sent Events (text/event-stream).

The same JSON objects as the data channel and ``/ws``, one per SSE event, each with its
number in the session as ``id:`` (no ``event:`` field: the JSON's ``type`` says what it is,
and a browser's ``EventSource.onmessage`` sees every one). For WHIP publishers, which have
no data channel, and for any client that prefers plain HTTP::

    curl -N -H "Authorization: Bearer $KEY" https://10.8.0.1:8001/sessions/$ID/events

- Who: the session's creator, or anyone with its capability ``?token=<events_token>`` from
  the answer (``gateway.http.sessions.find_session``); anyone else gets 404, as for a
  session that does not exist or has ended.
- From where: a new stream starts with every event the session still holds (its
  ``session.ready`` among them, unless the session is long past it); ``Last-Event-ID``
  (sent by ``EventSource`` when it reconnects) resumes after that event. Events older than
  the held ones (``signalling.eventlog``) cannot be replayed: the stream then starts with
  an ``error`` event, code ``events_missed``, that says how many were lost, and carries on.
- Heartbeats: a comment line every :data:`HEARTBEAT_S` when nothing else was sent, which
  keeps proxies from timing the stream out and finds readers that have gone.
- The end: after ``session.ended`` the stream closes.
- Bounds: at most ``signalling.subscribers.MAX_SUBSCRIBERS`` streams per session (429
  beyond); each has its own bounded queue with the outbox's drop policy; a write that
  waits longer than :data:`WRITE_TIMEOUT_S` for the reader drops the connection. A reader
  that stops reading costs its queue and a socket buffer, and never slows the session.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import hdrs, web

from gateway.http.cors import allowed_origins, apply_cors_headers
from gateway.http.headers import apply_security_headers
from gateway.http.middleware import json_error
from gateway.http.sessions import CAPABILITY_PARAM, find_session
from gateway.http.state import CONFIG
from signalling import protocol
from signalling.eventlog import parse_event_id
from signalling.outbox import Queued
from signalling.subscribers import MAX_SUBSCRIBERS

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
WRITE_TIMEOUT_S = 30.0
RETRY_MS = 2000  # EventSource's wait before it reconnects
HEARTBEAT = ": keep-alive\n\n"
STREAM_HEADERS = {
    hdrs.CONTENT_TYPE: "text/event-stream; charset=utf-8",
    # Never cached or transformed; "no" also stops nginx from buffering the stream.
    hdrs.CACHE_CONTROL: "no-store, no-transform",
    "X-Accel-Buffering": "no",
}
SUBSCRIBERS_RETRY_AFTER_S = 5
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line in an event stream


def events_path(session_id: str, token: str | None = None) -> str:
    """Where a session's events are read; with ``token``, the capability URL."""
    path = f"/sessions/{session_id}/events"
    return f"{path}?{CAPABILITY_PARAM}={token}" if token is not None else path


def sse_event(text: str, seq: int | None = None) -> str:
    """One SSE event carrying ``text`` (JSON is one line; any line break would start
    another ``data:`` line, which the reader joins back with a newline)."""
    head = f"id: {seq}\n" if seq is not None else ""
    data = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text))
    return f"{head}{data}\n"


def missed_event(count: int) -> str:
    """What a reader that asked for events no longer held is told first."""
    event = protocol.error(
        "events_missed",
        f"{count} earlier event{'s' if count != 1 else ''} of this session can no longer be "
        "replayed; the stream carries on from the oldest one held",
    )
    return sse_event(protocol.encode(event))


async def stream_events(request: web.Request) -> web.StreamResponse:
    session = find_session(request, capability=True)
    try:
        after = parse_event_id(request.headers.get("Last-Event-ID"))
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    if session.subscribers >= MAX_SUBSCRIBERS:
        return json_error(
            429,
            "rate_limited",
            f"this session already has {MAX_SUBSCRIBERS} event streams; close one first",
            {"Retry-After": str(SUBSCRIBERS_RETRY_AFTER_S)},
        )
    try:
        subscription, missed = session.subscribe(after or 0)
    except ValueError as exc:  # an id ahead of the session: not from this stream
        raise web.HTTPBadRequest(reason=f"Last-Event-ID: {exc}") from None
    response = web.StreamResponse(headers=STREAM_HEADERS)
    # Prepared here, so the middlewares see it too late to add these.
    apply_security_headers(request, response)
    apply_cors_headers(request, response, allowed_origins(request.app[CONFIG].cors_origins))
    logger.info("[%s] event stream opened (after %s)", session.id, after)
    try:
        await response.prepare(request)
        first = f"retry: {RETRY_MS}\n\n"
        if missed and after is not None:  # a gap in what this reader had been reading
            first += missed_event(missed)
        await write_bounded(request, response, first.encode())
        while True:
            item = await subscription.next(HEARTBEAT_S)
            if item is None and subscription.finished:
                break  # session.ended was the last one written
            await write_bounded(request, response, _frame(item).encode())
    except (ConnectionError, TimeoutError) as exc:
        logger.info("[%s] event stream reader gone: %s", session.id, str(exc) or type(exc).__name__)
    finally:
        session.unsubscribe(subscription)
        if subscription.dropped:
            logger.info(
                "[%s] event stream reader fell behind: %d events dropped",
                session.id,
                subscription.dropped,
            )
    return response


def _frame(item: Queued | None) -> str:
    return HEARTBEAT if item is None else sse_event(item.text, item.seq)


async def write_bounded(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """``data`` to a streamed response; TimeoutError (and the connection dropped) when the
    reader takes more than :data:`WRITE_TIMEOUT_S`."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)
    except TimeoutError:
        # A reader that stopped reading: drop the connection, or the write of the response's
        # end would wait on it forever.
        if request.transport is not None:
            request.transport.abort()
        raise
