"""The recent events of one session, numbered, so that a Server-Sent Events client that
reconnects with ``Last-Event-ID`` gets what it missed. Pure.

Every event a session sends gets the next number (1, 2, 3...), whoever reads it. The log
keeps the last :data:`MAX_EVENTS` of them and at most :data:`MAX_CHARS` characters of
encoded JSON, dropping the oldest first. A client asking for events older than that gets
what is still held and learns how many it missed (:attr:`Replay.missed`): the gateway says
so with an ``error`` event (code ``events_missed``) rather than pretending the stream is
whole. An id the session never gave (ahead of its last event, or not a number) is refused.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

MAX_EVENTS = 128
# A long reply.done is up to 64 KiB; a few of them, and the streamed text around them.
MAX_CHARS = 256 * 1024
MAX_ID_DIGITS = 18  # fits an int64, far beyond any session's count
_ID = re.compile(rf"[0-9]{{1,{MAX_ID_DIGITS}}}", re.ASCII)


@dataclass(frozen=True)
class Entry:
    seq: int  # the event's number in its session: the SSE ``id:``
    type: str
    text: str  # the encoded event


@dataclass(frozen=True)
class Replay:
    entries: tuple[Entry, ...]  # held events after the asked id, oldest first
    missed: int  # events after the asked id that are no longer held


class EventLog:
    def __init__(self, max_events: int = MAX_EVENTS, max_chars: int = MAX_CHARS) -> None:
        if max_events < 1 or max_chars < 1:
            raise ValueError(
                f"need max_events >= 1 and max_chars >= 1; got {max_events}, {max_chars}"
            )
        self.max_events = max_events
        self.max_chars = max_chars
        self._entries: deque[Entry] = deque()
        self._chars = 0
        self._last = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_seq(self) -> int:
        """The number of the newest event (0 before the first)."""
        return self._last

    def append(self, kind: str, text: str) -> Entry:
        self._last += 1
        entry = Entry(self._last, kind, text)
        self._entries.append(entry)
        self._chars += len(text)
        # The newest stays even when it alone is over the bound: a reader must see it.
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_events or self._chars > self.max_chars
        ):
            self._chars -= len(self._entries.popleft().text)
        return entry

    def replay(self, after: int) -> Replay:
        """What a reader that last saw event ``after`` (0: none) has not seen. Raises
        ValueError for an id this log never gave."""
        if not 0 <= after <= self._last:
            raise ValueError(
                f"event id {after} is not one of this session's (its last is {self._last})"
            )
        first = self._entries[0].seq if self._entries else self._last + 1
        held = tuple(entry for entry in self._entries if entry.seq > after)
        return Replay(held, max(0, first - after - 1))


def parse_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` header: None when absent or empty (a first connection); raises
    ValueError when it is not a number this gateway could have sent."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _ID.fullmatch(value):
        raise ValueError(
            f"Last-Event-ID must be an event number from this session's stream, got {value[:40]!r}"
        )
    return int(value)
