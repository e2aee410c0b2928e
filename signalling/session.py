"""One client session, whatever carries it: its state and clocks, the tasks it owns, and the
events waiting for the client. Transports (a WebRTC data channel, a WebSocket) are thin
adapters behind :class:`Transport`.

A session ends exactly once (``close``), whatever ends it — ``DELETE``, the client going
away, a clock running out, shutdown — and ending it says so (``session.ended``, with the
reason the client is told: ``signalling.ending``), cancels and awaits every task it owns,
closes the transport and forgets its buffers. ``session.ended`` is the last event: queued
behind what the client has not read yet, and given at most :data:`ENDED_FLUSH_TIMEOUT_S`
to be written before the transport closes anyway; a client that is already gone is not
written to at all.

Events go through one bounded :class:`~signalling.outbox.Outbox` drained by one writer
task: ``send`` never blocks and never raises, so the code that produces events (a reply
streaming from Ollama) cannot be broken by a slow or vanished client. The transport
applies back-pressure by making ``write`` wait; the outbox's drop policy absorbs it.

Every event is also numbered in the session's :class:`~signalling.eventlog.EventLog` (its
recent past, for ``Last-Event-ID``) and pushed to each :class:`Subscription` (a
Server-Sent Events stream), each bounded on its own. A transport that carries no events
(a WHIP publisher's offer with no data channel: ``transport_events`` false) leaves them
to the subscribers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from signalling.ending import client_reachable, public_reason
from signalling.errors import TransportClosed
from signalling.eventlog import EventLog
from signalling.lifecycle import SessionLimits, expiry
from signalling.outbox import Outbox
from signalling.protocol import EndedReason, Event, encode, session_ended
from signalling.subscribers import Subscription
from signalling.tasks import TaskOwner

logger = logging.getLogger(__name__)

OUTBOX_LIMIT = 256
TRANSPORT_CLOSE_TIMEOUT_S = 5.0
# How long a closing session waits for its writer to hand session.ended to the client.
ENDED_FLUSH_TIMEOUT_S = 1.0


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
        self.close_reason: str | None = None  # the gateway's (metrics, logs)
        self.ended_reason: EndedReason | None = None  # the client's (session.ended)
        # Who created it (the gateway's principal, None without auth): compared, never read.
        self.owner: object = None
        # Lets a client read this session's events without credentials (an EventSource
        # cannot send headers): handed to its creator only, in the answer.
        self.events_token = secrets.token_urlsafe(32)
        # False when the transport can never carry events (no data channel was offered).
        self.transport_events = True
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
        self.events = EventLog()
        self._subscribers: set[Subscription] = set()
        self._ended = False  # session.ended is in the log: subscribers get nothing more
        self._writing = False  # the writer is past opened(): the client can read events
        self._writer_done = asyncio.Event()  # it wrote session.ended, or stopped

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
        if self.transport_events:
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
        self._publish(str(event.get("type")), encode(event))

    def _publish(self, kind: str, text: str) -> None:
        entry = self.events.append(kind, text)
        for subscription in self._subscribers:
            subscription.push(entry)
        if not self.transport_events:
            return
        dropped = self._outbox.push(kind, text)
        if dropped is not None:
            self.dropped[dropped] += 1
            self.on_dropped(dropped)
            count = self.dropped[dropped]
            if count & (count - 1) == 0:  # 1, 2, 4, 8...: a stalled client must not flood the log
                logger.warning(
                    "[%s] client not reading events: %d %s dropped so far", self.id, count, dropped
                )
        self._queued.set()

    # --- other readers (Server-Sent Events) ---

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, after: int = 0) -> tuple[Subscription, int]:
        """A new reader of this session's events: first those after event number ``after``
        (0: all still held), then each one as it is sent. Returns it with how many events
        after ``after`` it missed (no longer held). Raises ValueError when ``after`` is not
        one of this session's event numbers. Pass it to :meth:`unsubscribe` when done."""
        replay = self.events.replay(after)
        subscription = Subscription()
        for entry in replay.entries:
            subscription.push(entry)
        if self._ended:
            subscription.end()  # what it gets ends with session.ended
        else:
            self._subscribers.add(subscription)
        return subscription, replay.missed

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.end()
        self._subscribers.discard(subscription)

    async def _write_loop(self) -> None:
        try:
            await self.transport.opened()
            self._writing = True
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
                if item.type == "session.ended":
                    return  # the last thing a session says
        finally:
            # A close waiting to flush session.ended must not wait for a writer that is gone.
            self._writing = False
            self._writer_done.set()

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
        self.ended_reason = public_reason(reason)
        logger.info("[%s] closing: %s (the client is told %s)", self.id, reason, self.ended_reason)
        await self._say_ended(self.ended_reason, reachable=client_reachable(reason))
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

    async def _say_ended(self, reason: EndedReason, *, reachable: bool) -> None:
        """session.ended to every reader; to the client too when it can still be reached,
        waiting (bounded) for the writer to deliver it behind what was already queued."""
        text = encode(session_ended(reason))
        entry = self.events.append("session.ended", text)
        self._ended = True
        for subscription in self._subscribers:
            subscription.push(entry)
            subscription.end()
        self._subscribers.clear()
        if not (reachable and self.transport_events and self._writing):
            return  # gone, never connected, or nothing carries events to it
        self._outbox.push("session.ended", text)  # kept by the drop policy: it goes last
        self._queued.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ENDED_FLUSH_TIMEOUT_S):
                await self._writer_done.wait()
        if self._outbox:
            logger.info(
                "[%s] client did not take session.ended within %.1f s",
                self.id,
                ENDED_FLUSH_TIMEOUT_S,
            )
