"""SDP offer → answer with aiortc, with its failures turned into :class:`OfferError`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from signalling.errors import OfferError
from signalling.ice import IcePolicy, create_peer_connection

NEGOTIATION_TIMEOUT_S = 10.0


# A URL (STUN, or TURN without credentials), or a server with credentials (a TURN relay:
# see ``signalling.turn``).
IceServer = str | RTCIceServer


def ice_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    # An explicit empty list: with None, aiortc falls back to a public STUN server and,
    # offline, waits ~5 s gathering before it answers. LAN/VPN use needs no STUN at all.
    return RTCConfiguration(
        iceServers=[s if isinstance(s, RTCIceServer) else RTCIceServer(urls=s) for s in servers]
    )


def new_peer_connection(
    ice_servers: Sequence[IceServer], policy: IcePolicy | None = None
) -> RTCPeerConnection:
    """``policy`` keeps ICE to chosen addresses and UDP ports (see ``signalling.ice``); a
    TURN server among ``ice_servers`` adds a relayed candidate under any policy."""
    return create_peer_connection(ice_configuration(ice_servers), policy or IcePolicy())


async def answer_offer(
    pc: RTCPeerConnection,
    sdp: str,
    timeout_s: float = NEGOTIATION_TIMEOUT_S,
    *,
    outbound: MediaStreamTrack | None = None,
) -> str:
    """Apply the offer and return the answer's SDP (all candidates gathered: no trickle).
    ``outbound`` (the spoken reply) goes on the first audio section the client receives
    on, if there is one; :func:`sends_audio` says afterwards whether it will be sent.

    aiortc raises assorted exceptions (ValueError, AssertionError, KeyError, ...) on
    offers that pass our own checks but that it cannot handle; each becomes OfferError.
    """
    try:
        await asyncio.wait_for(_negotiate(pc, sdp, outbound), timeout_s)
    except TimeoutError as exc:
        raise OfferError(f"negotiation did not finish within {timeout_s:.0f} s") from exc
    except OfferError:
        raise
    except Exception as exc:
        raise OfferError(
            f"offer rejected by the WebRTC stack: {type(exc).__name__}: {exc}"
        ) from exc
    description = pc.localDescription
    if description is None:  # pragma: no cover - aiortc sets it or raises
        raise OfferError("no answer was produced")
    return description.sdp


async def _negotiate(pc: RTCPeerConnection, sdp: str, outbound: MediaStreamTrack | None) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    if not decline_unused_media(pc) and pc.sctp is None:
        raise OfferError("offer has no audio the gateway can hear and no data channel")
    if outbound is not None:
        attach_outbound(pc, outbound)
    answer = await pc.createAnswer()
    if answer is None:  # pragma: no cover
        raise OfferError("no answer was produced")
    await pc.setLocalDescription(answer)


def decline_unused_media(pc: RTCPeerConnection) -> bool:
    """Answer ``inactive`` to every section the gateway would receive but not use (video,
    audio beyond the first); returns whether audio remains for it to hear.

    Call between ``setRemoteDescription`` and ``createAnswer``. aiortc starts a receiver, a
    decoder thread and an unbounded queue of decoded frames for every section it receives,
    whether or not anyone reads the track: one unread 640x480 camera grew the process by
    300 MB in 12 s. Inactive, the client sends nothing there and aiortc starts no receiver.
    """
    heard = False
    for transceiver in pc.getTransceivers():
        track = transceiver.receiver.track
        if track is None:  # the client sends nothing here: no receiver will run
            continue
        if transceiver.kind == "audio" and not heard:
            heard = True  # the track the voice pipeline listens to (the first, in m-line order)
            continue
        transceiver.direction = "inactive"
        track.stop()  # nothing will arrive: a reader's recv() ends instead of waiting forever
    return heard


def attach_outbound(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Put ``track`` on the first audio section the client offered to receive on (sendrecv
    or recvonly), so the answer carries it there; False when there is none (the client only
    sends: it gets text only). Never adds a section the offer did not have, which aiortc's
    own ``addTrack`` would do, making an answer the client must refuse."""
    for transceiver in pc.getTransceivers():
        # aiortc keeps the offer's direction, reversed to our side, only privately (tested
        # releases only: see ice.py). "sendonly" for us is a client that only listens.
        ours = getattr(transceiver, "_offerDirection", None)
        if transceiver.kind != "audio" or ours not in ("sendrecv", "sendonly"):
            continue
        if transceiver.sender.track is not None:
            continue
        transceiver.sender.replaceTrack(track)
        receiving = transceiver.direction in ("sendrecv", "recvonly")
        transceiver.direction = "sendrecv" if receiving else "sendonly"
        return True
    return False


def sends_audio(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """After negotiation: whether the answer sends ``track`` to the client."""
    return any(
        t.sender.track is track and t.currentDirection in ("sendrecv", "sendonly")
        for t in pc.getTransceivers()
    )
