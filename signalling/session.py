"""One WebRTC session: its peer connection, its data channel, and the tasks it owns.

A session ends exactly once (``close``), whatever ends it — ``DELETE``, ICE failure, the
peer closing, a connect timeout, shutdown — and ending it cancels and awaits every task
it owns, closes the peer connection and forgets its buffers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection

from signalling.lifecycle import SessionLimits, expiry
from signalling.protocol import Event, encode
from signalling.tasks import TaskOwner

logger = logging.getLogger(__name__)

# Events produced before the data channel opens wait here; the oldest go first when full.
OUTBOX_LIMIT = 64
# Beyond this many bytes queued in SCTP for a slow client, events are dropped, not queued.
MAX_BUFFERED_BYTES = 1024 * 1024
PC_CLOSE_TIMEOUT_S = 5.0


class SessionState(enum.Enum):
    NEGOTIATING = "negotiating"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class Session:
    def __init__(
        self,
        session_id: str,
        pc: RTCPeerConnection,
    ) -> None:
        self.id = session_id
        self.pc = pc
        self.state = SessionState.NEGOTIATING
        self.close_reason: str | None = None
        self.created_at = time.monotonic()
        self.last_activity = self.created_at
        self.on_message: Callable[[str | bytes], None] = lambda data: None
        self.on_channel_open: Callable[[], None] = lambda: None
        self.dropped_events = 0
        self.on_closed: list[Callable[[Session], None]] = []  # called once, in order
        self._channel: RTCDataChannel | None = None
        self._outbox: deque[str] = deque(maxlen=OUTBOX_LIMIT)
        self.tasks = TaskOwner(session_id)
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value}>"

    def touch(self) -> None:
        """Something happened (speech, a client message): the session is not idle."""
        self.last_activity = time.monotonic()

    def set_state(self, state: SessionState) -> None:
        if state is not self.state:
            logger.info("[%s] %s -> %s", self.id, self.state.value, state.value)
            self.state = state

    # --- tasks ---

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task this session owns: it is cancelled and awaited when the session ends."""
        return self.tasks.spawn(coro, name)

    # --- events ---

    def attach_channel(self, channel: RTCDataChannel) -> bool:
        """The first channel the client opens carries events; others are ignored."""
        if self._channel is not None or self.state is SessionState.CLOSED:
            return False
        self._channel = channel
        channel.on("message", self._message)
        if channel.readyState == "open":
            self._channel_open()
        else:
            channel.on("open", self._channel_open)
        return True

    def _message(self, data: str | bytes) -> None:
        self.touch()
        self.on_message(data)

    def _channel_open(self) -> None:
        self.on_channel_open()
        while self._outbox:
            self._transmit(self._outbox.popleft())

    def send(self, event: Event) -> None:
        if self.state is SessionState.CLOSED:
            return
        text = encode(event)
        if self._channel is None or self._channel.readyState != "open":
            if len(self._outbox) == self._outbox.maxlen:
                self.dropped_events += 1
            self._outbox.append(text)
            return
        self._transmit(text)

    def _transmit(self, text: str) -> None:
        assert self._channel is not None
        if self._channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.dropped_events += 1
            logger.warning("[%s] client not reading events: dropped one", self.id)
            return
        self._channel.send(text)

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

    async def watch(self, limits: SessionLimits) -> None:
        """Ends the session when one of its clocks runs out (see ``signalling.lifecycle``)."""
        while True:
            verdict = expiry(
                limits,
                created=self.created_at,
                connected=self.state is SessionState.CONNECTED,
                last_activity=self.last_activity,
                now=time.monotonic(),
            )
            if verdict.reason is not None:
                self.request_close(verdict.reason)
                return
            # Wake at least every few seconds: connecting or speaking moves the deadlines.
            await asyncio.sleep(min(verdict.check_in_s, 5.0))

    async def _close(self, reason: str) -> None:
        self.close_reason = reason
        logger.info("[%s] closing: %s", self.id, reason)
        self.on_message = lambda data: None  # nothing a client sends now starts new work
        await self.tasks.cancel_all()
        try:
            await asyncio.wait_for(self.pc.close(), PC_CLOSE_TIMEOUT_S)
        except Exception:  # aiortc can raise from close() after a mangled negotiation
            logger.warning("[%s] peer connection close failed", self.id, exc_info=True)
        self._channel = None
        self._outbox.clear()
        self.set_state(SessionState.CLOSED)
        for callback in self.on_closed:
            try:
                callback(self)
            except Exception:  # one failing observer must not skip the others
                logger.exception("[%s] close callback failed", self.id)
