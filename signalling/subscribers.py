"""Readers of a session's events besides its own transport: Server-Sent Events streams.

Each :class:`Subscription` has a bounded queue of its own with the outbox's drop policy
(``signalling.outbox``): the session pushes into it without waiting, so a reader that
stops reading loses streamed text (never what ends a reply), and can neither hold memory
without bound nor slow the session or its other readers down. The reader drains it at its
own pace with :meth:`Subscription.next`; once the session ended (``end``), what is queued
is still handed out, ``session.ended`` last, and then :attr:`Subscription.finished`.
"""

from __future__ import annotations

import asyncio

from signalling.eventlog import Entry
from signalling.outbox import Outbox, Queued

# Half the session's own outbox: a session may have several readers besides its client.
QUEUE_LIMIT = 128
MAX_SUBSCRIBERS = 8  # per session: a few tabs and tools, not a broadcast


class Subscription:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue = Outbox(limit)
        self._wake = asyncio.Event()
        self._ended = False
        self.dropped = 0  # events lost because this reader fell behind

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def finished(self) -> bool:
        """The session ended and everything it sent here was handed out."""
        return self._ended and not self._queue

    def push(self, entry: Entry) -> None:
        """Queue an event (the session calls this). Never blocks."""
        if self._ended:
            return
        if self._queue.push(entry.type, entry.text, entry.seq) is not None:
            self.dropped += 1
        self._wake.set()

    def end(self) -> None:
        """No more events will come (the session ended, or stopped this reader)."""
        self._ended = True
        self._wake.set()

    async def next(self, timeout_s: float) -> Queued | None:
        """The next event, waiting at most ``timeout_s``; None when none came (time for a
        heartbeat) or when :attr:`finished`."""
        if not self._queue and not self._ended:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
            except TimeoutError:
                return None
        return self._queue.pop()
