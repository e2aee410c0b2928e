"""One client session, whatever carries it: its state and clocks, the tasks it owns, and the
events waiting for the client. Transports (a WebRTC data channel, a WebSocket) are thin
adapters behind :class:`Transport`.

A session ends exactly once (``close``), whatever ends it — ``DELETE``, the client going
away, a clock running out, shutdown — and ending it cancels and awaits every task it
owns, closes the transport and forgets its buffers.

Events go through one bounded :class:`~signalling.outbox.Outbox` drained by one writer
task: ``send`` never blocks and never raises, so the code that produces events (a reply
streaming from Ollama) cannot be broken by a slow or vanished client. The transport
applies back-pressure by making ``write`` wait; the outbox's drop policy absorbs it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from signalling.errors import TransportClosed
from signalling.lifecycle import SessionLimits, expiry
from signalling.outbox import Outbox
from signalling.protocol import Event, encode
from signalling.tasks import TaskOwner

logger = logging.getLogger(__name__)

OUTBOX_LIMIT = 256
TRANSPORT_CLOSE_TIMEOUT_S = 5.0


class Transport(Protocol):
    kind: str  # "webrtc" | "ws": a metrics label

    async def opened(self) -> None:
        """Returns once events can be written (a data channel has opened)."""
        ...

    async def write(self, text: str) -> None:
        """Write one encoded event, waiting while the client is behind. Raises
        :class:`TransportClosed` once the client is gone."""
        ...

    async def close(self, reason: str) -> None: ...


class SessionState(enum.Enum):
    NEGOTIATING = "negotiating"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Session:
    def __init__(
        self,
        session_id: str,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = session_id
        self.transport = transport
        self.state = SessionState.NEGOTIATING
        self.close_reason: str | None = None
        self._clock = clock
        self.created_at = clock()
        self.last_activity = self.created_at
        self.on_message: Callable[[str | bytes], None] = lambda data: None
        self.on_dropped: Callable[[str], None] = lambda kind: None  # an event type lost
        self.dropped = Counter[str]()
        self.on_closed: list[Callable[[Session], None]] = []  # called once, in order
        self.tasks = TaskOwner(session_id)
        self._outbox = Outbox(OUTBOX_LIMIT)
        self._queued = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.transport.kind} {self.state.value}>"

    @property
    def closing(self) -> bool:
        """Ending or ended: nothing new may start."""
        return self._closing is not None

    def touch(self) -> None:
        """Something happened (speech, a client message): the session is not idle."""
        self.last_activity = self._clock()

    def set_state(self, state: SessionState) -> None:
        if state is not self.state and self.state is not SessionState.CLOSED:
            logger.info("[%s] %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    def start(self, limits: SessionLimits) -> None:
        """Start writing events and watching the clocks (after negotiation)."""
        self.spawn(self._write_loop(), "writer")
        self.spawn(self._watch(limits), "watchdog")

    # --- tasks ---

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task this session owns: it is cancelled and awaited when the session ends."""
        return self.tasks.spawn(coro, name)

    # --- events ---

    def receive(self, data: str | bytes) -> None:
        """A message from the client (the transport calls this)."""
        if self.closing:
            return  # nothing a client sends now starts new work
        self.touch()
        self.on_message(data)

    def send(self, event: Event) -> None:
        """Queue an event for the client. Never blocks, never raises."""
        if self.closing:
            return
        kind = str(event.get("type"))
        dropped = self._outbox.push(kind, encode(event))
        if dropped is not None:
            self.dropped[dropped] += 1
            self.on_dropped(dropped)
            count = self.dropped[dropped]
            if count & (count - 1) == 0:  # 1, 2, 4, 8...: a stalled client must not flood the log
                logger.warning(
                    "[%s] client not reading events: %d %s dropped so far", self.id, count, dropped
                )
        self._queued.set()

    async def _write_loop(self) -> None:
        await self.transport.opened()
        while True:
            item = self._outbox.pop()
            if item is None:
                self._queued.clear()
                await self._queued.wait()
                continue
            try:
                await self.transport.write(item.text)
            except TransportClosed as exc:
                logger.info("[%s] cannot send: %s", self.id, exc)
                self.request_close("disconnected")
                return
            except Exception:  # a bug: a session that can never speak again must end
                logger.exception("[%s] writing an event failed", self.id)
                self.request_close("error")
                return

    # --- ending ---

    def request_close(self, reason: str) -> asyncio.Task[None]:
        """Start ending the session (from a callback that cannot await); the session keeps
        the task, and every later ``close`` waits for this same one."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(reason), name=f"{self.id}:close"
            )
        return self._closing

    async def close(self, reason: str) -> None:
        """Idempotent; concurrent callers all wait for the one close to finish."""
        await asyncio.shield(self.request_close(reason))

    async def _watch(self, limits: SessionLimits) -> None:
        """Ends the session when one of its clocks runs out (see ``signalling.lifecycle``)."""
        while True:
            verdict = expiry(
                limits,
                created=self.created_at,
                connected=self.state is SessionState.CONNECTED,
                last_activity=self.last_activity,
                now=self._clock(),
            )
            if verdict.reason is not None:
                self.request_close(verdict.reason)
                return
            # Wake at least every few seconds: connecting or speaking moves the deadlines.
            await asyncio.sleep(min(verdict.check_in_s, 5.0))

    async def _close(self, reason: str) -> None:
        self.close_reason = reason
        logger.info("[%s] closing: %s", self.id, reason)
        await self.tasks.cancel_all()
        try:
            await asyncio.wait_for(self.transport.close(reason), TRANSPORT_CLOSE_TIMEOUT_S)
        except Exception:  # aiortc can raise from close() after a mangled negotiation
            logger.warning("[%s] transport close failed", self.id, exc_info=True)
        self._outbox.clear()
        self.set_state(SessionState.CLOSED)
        for callback in self.on_closed:
            try:
                callback(self)
            except Exception:  # one failing observer must not skip the others
                logger.exception("[%s] close callback failed", self.id)
