"""A Server-Sent Events reader for tests, on aiohttp's client: it parses the stream as the
HTML standard says a browser does (``id:``, ``data:``, ``retry:``, comments, blank lines)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    id: int | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type"))


@dataclass
class EventStream:
    response: aiohttp.ClientResponse
    comments: int = 0  # heartbeats seen
    retry_ms: int | None = None
    received: list[SseEvent] = field(default_factory=list)

    async def next(self, within: float = 10.0) -> SseEvent:
        """The next event; EOFError when the stream ends, TimeoutError when none comes."""
        deadline = time.monotonic() + within
        ident: int | None = None
        data: list[str] = []
        while True:
            left = max(deadline - time.monotonic(), 0.01)
            raw = await asyncio.wait_for(self.response.content.readline(), left)
            if not raw:
                raise EOFError("the event stream ended")
            line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            if not line:
                if data:
                    event = SseEvent(ident, json.loads("\n".join(data)))
                    self.received.append(event)
                    return event
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                ident = int(value)
            elif name == "data":
                data.append(value)
            elif name == "retry":
                self.retry_ms = int(value)

    async def until(self, *types: str, within: float = 20.0) -> SseEvent:
        """The next event of one of ``types`` (others are kept in ``received``)."""
        deadline = time.monotonic() + within
        while True:
            event = await self.next(max(deadline - time.monotonic(), 0.01))
            if event.type in types:
                return event

    async def rest(self, within: float = 10.0) -> list[SseEvent]:
        """Every event up to the end of the stream."""
        deadline = time.monotonic() + within
        events = []
        while True:
            try:
                events.append(await self.next(max(deadline - time.monotonic(), 0.01)))
            except EOFError:
                return events
