"""The WebRTC transport of a session: its peer connection, and the data channel that carries
events. The gateway uses the first channel the client opens, whatever its label.

Closing lets what was written leave first (``session.ended`` above all), for at most
:data:`SETTLE_TIMEOUT_S`: aiortc's ``close()`` aborts the SCTP association, which drops
whatever is still queued or unacknowledged."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError

from signalling.errors import TransportClosed

logger = logging.getLogger(__name__)

# Beyond this many bytes queued in SCTP for a slow client, the writer waits (and the
# session's outbox starts dropping what can be lost) instead of queueing more here.
MAX_BUFFERED_BYTES = 1024 * 1024
RESUME_BELOW_BYTES = MAX_BUFFERED_BYTES // 4
SETTLE_TIMEOUT_S = 1.0
SETTLE_POLL_S = 0.02


class PeerTransport:
    kind = "webrtc"

    def __init__(self, pc: RTCPeerConnection, session_id: str) -> None:
        self.pc = pc
        self._id = session_id  # for log lines
        self.channel: RTCDataChannel | None = None
        self.on_message: Callable[[str | bytes], None] = lambda data: None
        self._open = asyncio.Event()
        self._drained = asyncio.Event()
        pc.on("datachannel", self.attach)

    def attach(self, channel: RTCDataChannel) -> bool:
        """The first channel the client opens carries events; others are ignored."""
        if self.channel is not None:
            logger.info("[%s] ignoring extra data channel %r", self._id, channel.label[:64])
            return False
        self.channel = channel
        channel.bufferedAmountLowThreshold = RESUME_BELOW_BYTES
        channel.on("message", lambda data: self.on_message(data))
        channel.on("bufferedamountlow", self._drained.set)
        channel.on("close", self._drained.set)  # wake a waiting writer to see it closed
        if channel.readyState == "open":
            self._open.set()
        else:
            channel.on("open", self._open.set)
        return True

    async def opened(self) -> None:
        await self._open.wait()

    async def write(self, text: str) -> None:
        channel = self.channel
        if self.pc.connectionState == "closed":
            raise TransportClosed("the peer connection is closed")
        while channel is not None and channel.bufferedAmount > MAX_BUFFERED_BYTES:
            if channel.readyState != "open":
                break
            self._drained.clear()
            await self._drained.wait()
        if channel is None or channel.readyState != "open":
            return  # the client closed its channel; the media may go on, so may the session
        try:
            channel.send(text)
        except InvalidStateError:
            return  # closed between the check and the send
        except ValueError as exc:  # larger than the client's max-message-size
            logger.warning("[%s] event not sent: %s", self._id, exc)

    async def close(self, reason: str) -> None:
        await self._settle(SETTLE_TIMEOUT_S)
        await self.pc.close()

    async def _settle(self, timeout_s: float) -> None:
        # Polled: aiortc signals no event when the client acknowledges data.
        for _ in range(math.ceil(timeout_s / SETTLE_POLL_S)):
            if not self._unacknowledged():
                return
            await asyncio.sleep(SETTLE_POLL_S)

    def _unacknowledged(self) -> bool:
        """Whether the open channel still holds data the client has not acknowledged."""
        channel = self.channel
        if (
            channel is None
            or channel.readyState != "open"
            or self.pc.connectionState != "connected"
        ):
            return False  # nothing to wait for, or no one to deliver it to
        if channel.bufferedAmount > 0:
            return True
        # aiortc's queues of chunks not yet sent and not yet acknowledged (private, tested
        # releases only: without them, a sent chunk counts as delivered).
        sctp = self.pc.sctp
        return any(getattr(sctp, name, None) for name in ("_outbound_queue", "_sent_queue"))
