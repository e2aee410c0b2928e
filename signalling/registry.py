"""The live sessions of one gateway, with the limit on how many may exist at once."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from signalling.errors import SessionLimitError, SessionNotFound
from signalling.session import Session

logger = logging.getLogger(__name__)


# A replica's name (``--replica-id``): what a load balancer routes ``/sessions/<id>`` by.
REPLICA_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
REPLICA_SEPARATOR = "."  # never in a token_urlsafe token, so the first one splits an id


def parse_replica_id(text: str) -> str:
    """A replica's name as given, or ValueError saying what one must look like."""
    if not REPLICA_ID.fullmatch(text):
        raise ValueError(
            "expected 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit, "
            f"got {text!r}"
        )
    return text


def new_session_id(replica: str | None = None, worker: str | None = None) -> str:
    """Every session id this gateway makes. 128 bits from the OS CSPRNG (unguessable in a
    URL), after ``<replica>.`` when the gateway is one of several behind a load balancer,
    so that the balancer sends ``/sessions/<id>`` to the replica that holds the session,
    and after ``<worker>.`` in a media worker, so that the front sends it to the worker."""
    names = [parse_replica_id(name) for name in (replica, worker) if name]
    return REPLICA_SEPARATOR.join([*names, secrets.token_urlsafe(16)])


def worker_of(session_id: str) -> str | None:
    """The media worker a session id names (the field before the token), if any."""
    fields = session_id.split(REPLICA_SEPARATOR)
    return fields[-2] if len(fields) >= 2 else None


class SessionRegistry:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._sessions)

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a slot while an offer is negotiated (which awaits), so concurrent offers
        cannot overshoot the limit. Raises :class:`SessionLimitError` when full."""
        if len(self._sessions) + self._reserved >= self.max_sessions:
            raise SessionLimitError(
                f"all {self.max_sessions} sessions are in use; try again shortly"
            )
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session

    def discard(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def find(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {session_id[:64]!r}") from None

    async def close_all(self, reason: str) -> None:
        """Ends every session at once (``shutdown``: each is told ``session.ended`` first).
        Concurrent, so the whole takes as long as the slowest session, whose wait for its
        client is bounded (``signalling.session.ENDED_FLUSH_TIMEOUT_S``)."""
        sessions = list(self._sessions.values())
        if not sessions:
            return
        logger.info("closing %d sessions: %s", len(sessions), reason)
        started = time.monotonic()
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)
        logger.info("closed %d sessions in %.1f s", len(sessions), time.monotonic() - started)
