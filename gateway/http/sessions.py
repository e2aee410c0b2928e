"""What every session gets from the gateway, whichever transport carries it: admission
against the limits (``--max-sessions`` in total, ``--sessions-per-client`` per address),
registration (so ``DELETE /sessions/<id>`` and shutdown reach it), its clocks, metrics and
the log line when it ends; and who may reach a session by its URL (:func:`find_session`).

Access to ``/sessions/<id>`` and its events: with ``--auth none`` the unguessable id is
enough (as it always was for ``DELETE``). With auth on, a session is its creator's: another
principal gets 404, exactly as for an id that does not exist, so that nothing tells it the
session is there. ``/sessions/<id>/events`` also takes the session's capability,
``?token=<events_token>`` (handed to the creator in the answer), in place of credentials:
an EventSource cannot send an ``Authorization`` header. A wrong token is a 404 too, and
counts as a failed authentication (``gateway.http.auth``). Behind the front of media
workers the same rules hold: each worker knows the front's ``--auth`` and who authenticated
there (``gateway.http.worker``), and the front keeps the guessing budget (:class:`GuessBudget`).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiohttp import web

from gateway.errors import SessionNotFound
from gateway.http.admission import refuse_when_full
from gateway.http.auth import AUTH_FAILURES, principal_of
from gateway.http.forwarded import client_address
from gateway.http.middleware import SESSION_RETRY_AFTER_S, retry_after
from gateway.http.state import CLIENT_SESSIONS, CONFIG, DRAIN, METRICS, SESSIONS
from signalling.lifecycle import SessionLimits
from signalling.limits import client_key
from signalling.session import Session

logger = logging.getLogger(__name__)

Register = Callable[[Session], None]


@contextmanager
def admit(app: web.Application, remote: str | None) -> Iterator[Register]:
    """Hold a slot for one more session while it is set up (which awaits), so concurrent
    requests cannot overshoot the limits; the caller registers the session before leaving.
    Refused: 429 for this address, :class:`SessionLimitError` (503) in total, and
    :class:`AtCapacity` (503) when the open sessions leave no measured room."""
    app[DRAIN].refuse_new_session()  # 503 while shutting down
    refuse_when_full(app)
    client = client_key(remote)
    limiter = app[CLIENT_SESSIONS]
    if not limiter.acquire(client):
        raise web.HTTPTooManyRequests(
            reason="too many sessions from your address; end one first",
            headers=retry_after(SESSION_RETRY_AFTER_S),
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
            "[%s] %s session ended (%s, told %s) after %.0f s",
            session.id,
            session.transport.kind,
            session.close_reason,
            session.ended_reason,
            time.monotonic() - session.created_at,
        )

    session.on_closed.append(closed)
    session.start(
        SessionLimits(max_duration_s=config.max_session_s, idle_timeout_s=config.idle_timeout_s)
    )


# --- who may reach a session ---

CAPABILITY_PARAM = "token"


def may_access(
    *, auth: bool, owner: object, principal: object, presented: str | None, capability: str
) -> bool:
    """Whether a request may act on a session (see the module's docstring). ``presented``:
    the capability it sent (None: none), checked in constant time; ``principal``: who it
    authenticated as (None: nobody)."""
    if presented is not None:
        return hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), capability.encode("ascii")
        )
    if not auth:
        return True
    return principal is not None and (owner is None or owner == principal)


class GuessBudget:
    """Failed guesses at a session's capability (``?token=``) from one address count as
    failed authentications (``app[AUTH_FAILURES]``, there when auth is on). The auth
    middleware lets such a request through unread, so whoever answers it spends the budget:
    the single-process gateway in :func:`find_session`, the front of media workers on the
    worker's 404."""

    def __init__(self, request: web.Request) -> None:
        self._failures = request.app.get(AUTH_FAILURES)
        self._client = client_key(client_address(request))
        self._now = time.monotonic()

    def refuse_when_spent(self) -> None:
        """429 when this address has no failed attempts left."""
        wait = self._failures.wait(self._client, self._now) if self._failures else None
        if wait is not None:
            raise web.HTTPTooManyRequests(
                reason="too many failed authentications from your address; try again later",
                headers=retry_after(wait),
            )

    def failed(self) -> None:
        if self._failures is not None:
            self._failures.check(self._client, self._now)


def find_session(request: web.Request, *, capability: bool = False) -> Session:
    """The session of ``/sessions/{session_id}``, when this request may reach it; else
    :class:`SessionNotFound` (404), the same for every reason. ``capability``: the route
    takes ``?token=`` too."""
    app = request.app
    session_id = request.match_info["session_id"]
    presented = request.query.get(CAPABILITY_PARAM) if capability else None
    budget = GuessBudget(request) if presented is not None else None
    if budget is not None:
        budget.refuse_when_spent()
    session = app[SESSIONS].find(session_id)
    allowed = session is not None and may_access(
        auth=app[CONFIG].auth != "none",
        owner=session.owner,
        principal=principal_of(request),
        presented=presented,
        capability=session.events_token,
    )
    if session is None or not allowed:
        if budget is not None:
            budget.failed()  # a capability guessed at
        raise SessionNotFound(f"no session {session_id[:64]!r}")
    return session
