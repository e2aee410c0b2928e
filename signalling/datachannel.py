"""The WebRTC transport of a session: its peer connection, and the data channel that carries
events. The gateway uses the first channel the client opens, whatever its label."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.exceptions import InvalidStateError

from signalling.errors import TransportClosed

logger = logging.getLogger(__name__)

# Beyond this many bytes queued in SCTP for a slow client, the writer waits (and the
# session's outbox starts dropping what can be lost) instead of queueing more here.
MAX_BUFFERED_BYTES = 1024 * 1024
RESUME_BELOW_BYTES = MAX_BUFFERED_BYTES // 4


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
        await self.pc.close()
