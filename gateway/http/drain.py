"""Graceful drain, for a restart or an upgrade that does not cut people off mid-answer.

The first SIGTERM (or Ctrl+C) stops taking sessions: an offer, a WHIP publish or a new
``/ws`` gets 503 with Retry-After, and ``/ready`` turns 503 at once, so that a load
balancer sends people elsewhere. Replies already running (streamed text, or speech still
playing) may finish for up to ``--drain-timeout-s``; then every session is ended with
``session.ended`` (``shutdown``). A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from signalling.registry import SessionRegistry

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 10  # long enough for a restarted gateway to load its models
POLL_S = 0.1  # how often the drain looks whether the last reply has finished

Busy = Callable[[], bool]


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._busy: dict[str, Busy] = {}  # session id → whether a reply is running
        self._hurry = asyncio.Event()

    def watch(self, session_id: str, busy: Busy) -> None:
        """A session whose running reply the drain waits for (until the session ends)."""
        self._busy[session_id] = busy

    def forget(self, session_id: str) -> None:
        self._busy.pop(session_id, None)

    def busy(self) -> list[str]:
        """The sessions with a reply running now."""
        return [session_id for session_id, busy in self._busy.items() if busy()]

    def refuse_new_session(self) -> None:
        if self.draining:
            raise web.HTTPServiceUnavailable(
                reason="the gateway is shutting down; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    def hurry(self) -> None:
        """Stop waiting for replies (a second signal)."""
        self._hurry.set()

    async def run(self, sessions: SessionRegistry, timeout_s: float) -> None:
        """Refuse new sessions, let running replies finish (at most ``timeout_s``), then end
        every session; returns once they have all ended."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        waiting = self.busy()
        if waiting:
            logger.info(
                "draining: %d sessions finishing their replies (at most %.0f s; "
                "signal again to stop now)",
                len(waiting),
                timeout_s,
            )
        while waiting and not self._hurry.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning(
                    "drain: %d replies still running after %.0f s", len(waiting), timeout_s
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), min(POLL_S, left))
            waiting = self.busy()
        await sessions.close_all("shutdown")
