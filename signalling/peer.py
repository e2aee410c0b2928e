"""SDP offer → answer with aiortc, with its failures turned into :class:`OfferError`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from signalling.errors import OfferError
from signalling.ice import IcePolicy, create_peer_connection

NEGOTIATION_TIMEOUT_S = 10.0


def ice_configuration(servers: Sequence[str]) -> RTCConfiguration:
    # An explicit empty list: with None, aiortc falls back to a public STUN server and,
    # offline, waits ~5 s gathering before it answers. LAN/VPN use needs no STUN at all.
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in servers])


def new_peer_connection(
    ice_servers: Sequence[str], policy: IcePolicy | None = None
) -> RTCPeerConnection:
    """``policy`` keeps ICE to chosen addresses and UDP ports (see ``signalling.ice``)."""
    return create_peer_connection(ice_configuration(ice_servers), policy or IcePolicy())


async def answer_offer(
    pc: RTCPeerConnection, sdp: str, timeout_s: float = NEGOTIATION_TIMEOUT_S
) -> str:
    """Apply the offer and return the answer's SDP (all candidates gathered: no trickle).

    aiortc raises assorted exceptions (ValueError, AssertionError, KeyError, ...) on
    offers that pass our own checks but that it cannot handle; each becomes OfferError.
    """
    try:
        await asyncio.wait_for(_negotiate(pc, sdp), timeout_s)
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


async def _negotiate(pc: RTCPeerConnection, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    if not any(t.kind == "audio" and t.receiver is not None for t in pc.getTransceivers()):
        raise OfferError("offer has no audio the gateway can receive")
    answer = await pc.createAnswer()
    if answer is None:  # pragma: no cover
        raise OfferError("no answer was produced")
    await pc.setLocalDescription(answer)
