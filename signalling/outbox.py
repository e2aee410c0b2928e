"""Events waiting for a client, bounded, with a stated policy for what is dropped. Pure.

A client that stops reading (a stalled tab, a WebSocket nobody reads) must not make the
gateway queue without bound, and must not lose what ends a reply either. When the outbox
is full, the oldest event that can be lost is dropped: streamed text (``reply.delta``,
whose text ``reply.done`` repeats), interim captions, speech markers, pongs. Events that
end or explain something (``reply.done``, ``reply.cancelled``, ``error``, finals, the
session's own) are kept; only when nothing else is left to drop does the oldest of them
go, so the bound holds whatever the client does.

The same policy bounds each Server-Sent Events subscriber's queue
(``signalling.subscribers``), whose items also carry the event's number (``seq``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Losing one of these costs the client nothing it cannot rebuild or do without.
DROPPABLE = frozenset(
    {
        "reply.delta",
        "transcript.partial",
        "speech.started",
        "speech.stopped",
        "pong",
        "reply.audio.started",
        "reply.audio.done",
    }
)


@dataclass(frozen=True)
class Queued:
    type: str
    text: str  # the encoded event
    seq: int = 0  # its number in the session's event log, where one is kept


class Outbox:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._items: deque[Queued] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, kind: str, text: str, seq: int = 0) -> str | None:
        """Queue an event; returns the type of the event dropped to make room, if any."""
        item = Queued(kind, text, seq)
        if len(self._items) < self.limit:
            self._items.append(item)
            return None
        for index, queued in enumerate(self._items):
            if queued.type in DROPPABLE:
                del self._items[index]
                self._items.append(item)
                return queued.type
        if kind in DROPPABLE:
            return kind  # everything queued matters more than this
        dropped = self._items.popleft()
        self._items.append(item)
        return dropped.type

    def pop(self) -> Queued | None:
        return self._items.popleft() if self._items else None

    def clear(self) -> None:
        self._items.clear()
