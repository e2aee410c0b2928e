"""What an offer's media sections become: the gateway hears one audio track and uses the
data channel; everything else (a camera, extra audio) is declined in the answer, so aiortc
never starts a receiver or decoder for it. An offer with neither audio the client sends nor
a data channel is refused."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtcrtpreceiver import RemoteStreamTrack

from gateway.errors import OfferError
from gateway.http.state import SESSIONS
from gateway.testing.loopback import LoopbackClient, load_clips
from signalling.datachannel import PeerTransport
from signalling.peer import answer_offer, new_peer_connection
from tests.conftest import GatewayFactory
from tests.test_loopback_voice import overlap

NO_SERVERS = RTCConfiguration(iceServers=[])


def directions(sdp: str) -> list[tuple[str, str | None]]:
    """Each m-line's kind and direction (None for the data channel), in order. A port of 0
    counts as declined too."""
    out: list[tuple[str, str | None]] = []
    for part in sdp.split("\r\nm=")[1:]:
        kind, port = part.split(" ", 2)[:2]
        found = [
            line[2:]
            for line in part.split("\r\n")
            if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
        ]
        out.append((kind, "inactive" if port == "0" else (found[-1] if found else None)))
    return out


def video_decoders() -> int:
    """Running aiortc video decoder threads in this process (the client decodes nothing)."""
    return sum(t.name == "video-decoder" and t.is_alive() for t in threading.enumerate())


async def test_video_is_declined_and_never_decoded(gateway: GatewayFactory) -> None:
    client = await gateway()
    peer = LoopbackClient()
    camera = VideoStreamTrack()
    peer.pc.addTrack(camera)
    try:
        response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
        assert response.status == 200, await response.text()
        answer = await response.json()
        await peer.accept(answer)
        await peer.next_event("session.ready", within=10)
        text, audio = load_clips()[0]
        peer.mic.play(audio)
        final = await peer.next_event("transcript.final")  # ~3 s with the camera offered
        await asyncio.sleep(1.0)  # time for any video to arrive and be decoded

        transport = client.app[SESSIONS].get(answer["session_id"]).transport
        assert isinstance(transport, PeerTransport)
        (video,) = [t for t in transport.pc.getTransceivers() if t.kind == "video"]
        stats = await video.receiver.getStats()
        track = video.receiver.track
        observed = {
            "answer": directions(answer["sdp"]),
            "gateway's video direction": video.currentDirection,
            "video packets received": sum(
                getattr(s, "packetsReceived", 0) for s in stats.values() if s.type == "inbound-rtp"
            ),
            "video decoder threads": video_decoders(),
            # aiortc's unbounded queue of decoded frames that nobody reads: the leak
            "video frames queued": (
                track._queue.qsize() if isinstance(track, RemoteStreamTrack) else 0
            ),
        }
        assert observed == {
            "answer": [("audio", "recvonly"), ("video", "inactive"), ("application", None)],
            "gateway's video direction": "inactive",
            "video packets received": 0,
            "video decoder threads": 0,
            "video frames queued": 0,
        }
        assert overlap(text, final["text"]) >= 0.85, final["text"]
    finally:
        camera.stop()
        await peer.close()


class ChannelClient:
    """An aiortc peer with a data channel and whatever media the test adds."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(NO_SERVERS)
        self.channel = self.pc.createDataChannel("events")
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel.on("message", lambda data: self.messages.put_nowait(json.loads(data)))

    async def offer(self) -> dict[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer"}

    async def next(self, kind: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.messages.get(), 10)
            if message["type"] == kind:
                return message


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        ((), [("application", None)]),
        (("video",), [("video", "inactive"), ("application", None)]),
        (("recvonly audio",), [("audio", "inactive"), ("application", None)]),
        (
            ("sendonly audio", "sendonly audio"),
            [("audio", "recvonly"), ("audio", "inactive"), ("application", None)],
        ),
    ],
    ids=[
        "data channel only",
        "video and data channel",
        "recvonly audio and data channel",
        "two audio and data channel",
    ],
)
async def test_answer_keeps_one_audio_and_the_data_channel(
    gateway: GatewayFactory, media: tuple[str, ...], expected: list[tuple[str, str | None]]
) -> None:
    client = await gateway()
    peer = ChannelClient()
    tracks = []
    for kind in media:
        if kind == "video":
            tracks.append(VideoStreamTrack())
            peer.pc.addTrack(tracks[-1])
        else:
            peer.pc.addTransceiver("audio", direction=kind.split()[0])
    try:
        response = await client.post("/offer", json=await peer.offer())
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert directions(answer["sdp"]) == expected
        await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        ready = await peer.next("session.ready")  # typed text works: the session is usable
        assert ready["session_id"] == answer["session_id"]
        peer.channel.send(json.dumps({"type": "ping", "id": 7}))
        assert (await peer.next("pong"))["id"] == 7
        transport = client.app[SESSIONS].get(answer["session_id"]).transport
        assert isinstance(transport, PeerTransport)
        rtp = [t.currentDirection for t in transport.pc.getTransceivers()]
        assert rtp == [direction for kind, direction in expected if kind != "application"]
    finally:
        for track in tracks:
            track.stop()
        await peer.pc.close()


async def recvonly_audio_offer() -> str:
    """What a client that only listens, and opens no data channel, offers."""
    pc = RTCPeerConnection(NO_SERVERS)
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_offer_with_nothing_to_use_is_400_and_holds_no_slot(
    gateway: GatewayFactory,
) -> None:
    client: TestClient = await gateway(max_sessions=1)  # type: ignore[type-arg]
    response = await client.post(
        "/offer", json={"sdp": await recvonly_audio_offer(), "type": "offer"}
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_offer"
    assert "is recvonly (the client only listens) and there is no data channel" in error["message"]
    assert len(client.app[SESSIONS]) == 0


async def test_peer_refuses_what_it_cannot_use_without_the_validator() -> None:
    # answer_offer is callable without parse_offer in front of it (tests, a future route):
    # its own check must still refuse an offer with nothing to hear and no data channel.
    pc = new_peer_connection([])
    try:
        with pytest.raises(OfferError, match="no audio the gateway can hear and no data channel"):
            await answer_offer(pc, await recvonly_audio_offer())
    finally:
        await pc.close()
