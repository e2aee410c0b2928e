"""What every session gets from the gateway, whichever transport carries it: admission
against the limits (``--max-sessions`` in total, ``--sessions-per-client`` per address),
registration (so ``DELETE /sessions/<id>`` and shutdown reach it), its clocks, metrics and
the log line when it ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from gateway.http.middleware import SESSION_RETRY_AFTER_S
from gateway.http.state import CLIENT_SESSIONS, CONFIG, METRICS, SESSIONS
from signalling.lifecycle import SessionLimits
from signalling.limits import client_key
from signalling.session import Session

logger = logging.getLogger(__name__)

Register = Callable[[Session], None]


@contextmanager
def admit(app: web.Application, remote: str | None) -> Iterator[Register]:
    """Hold a slot for one more session while it is set up (which awaits), so concurrent
    requests cannot overshoot the limits; the caller registers the session before leaving.
    Refused: 429 for this address, :class:`SessionLimitError` (503) in total."""
    client = client_key(remote)
    limiter = app[CLIENT_SESSIONS]
    if not limiter.acquire(client):
        raise web.HTTPTooManyRequests(
            reason="too many sessions from your address; end one first",
            headers={"Retry-After": str(SESSION_RETRY_AFTER_S)},
        )
    registered = False

    def register(session: Session) -> None:
        nonlocal registered
        registered = True
        _register(app, session, client)

    try:
        with app[SESSIONS].reserve():
            yield register
    finally:
        if not registered:
            limiter.release(client)


def _register(app: web.Application, session: Session, client: str) -> None:
    config = app[CONFIG]
    metrics = app[METRICS]
    app[SESSIONS].add(session)
    metrics.sessions_started.labels(session.transport.kind).inc()
    metrics.sessions_active.inc()
    session.on_dropped = lambda kind: metrics.events_dropped.labels(kind).inc()

    def closed(session: Session) -> None:
        app[SESSIONS].discard(session)
        app[CLIENT_SESSIONS].release(client)
        metrics.sessions_active.dec()
        metrics.sessions_ended.labels(session.close_reason or "unknown").inc()
        logger.info(
            "[%s] %s session ended (%s) after %.0f s",
            session.id,
            session.transport.kind,
            session.close_reason,
            time.monotonic() - session.created_at,
        )

    session.on_closed.append(closed)
    session.start(
        SessionLimits(max_duration_s=config.max_session_s, idle_timeout_s=config.idle_timeout_s)
    )
