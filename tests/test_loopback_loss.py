"""Loopback over a lossy link: a real aiortc client drops 10 % of its microphone's RTP
packets (encoded as a browser does, with in-band FEC) on the way to the app on 127.0.0.1."""

from __future__ import annotations

import re

import numpy as np
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.loopback import LoopbackClient, LossPattern, load_clips
from tests.conftest import GatewayFactory
from tests.test_loopback_voice import overlap


async def counters(client: TestClient) -> dict[str, float]:  # type: ignore[type-arg]
    text = await (await client.get("/metrics")).text()
    return {
        sample.name: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("gateway_audio_")
    }


async def test_a_lossy_link_keeps_the_timeline_whole_and_the_words_right(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    loss = LossPattern(0.10, seed=5)
    peer = LoopbackClient(loss=loss, browser_opus=True)
    response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
    assert response.status == 200, await response.text()
    answer = await response.json()
    # The answer asks for in-band FEC: browsers send it only then.
    assert re.search(r"a=fmtp:\d+ .*useinbandfec=1", answer["sdp"])
    await peer.accept(answer)
    await peer.next_event("session.ready", within=10)

    text, audio = load_clips()[1]  # "Please remind me to call my mother at six o'clock."
    peer.mic.play(np.concatenate([audio, np.zeros(16_000, dtype=np.float32)]))
    final = await peer.next_event("transcript.final", within=30)
    assert overlap(text, final["text"]) >= 0.85, final["text"]

    # The client keeps sending (silence): what it sent last is still on its way, or held.
    sent, dropped = loss.sent, loss.dropped
    seen = await counters(client)
    assert dropped >= 0.05 * sent
    lost = seen["gateway_audio_frames_lost_total"]
    concealed = seen["gateway_audio_frames_concealed_total"]
    recovered = seen["gateway_audio_frames_recovered_total"]
    # Every frame the network lost, and only those, was rebuilt or concealed: the listener
    # found no gap in the timeline (it would have counted more as lost).
    assert abs(lost - dropped) <= 5, (lost, dropped)
    assert lost == concealed + recovered
    assert recovered >= 0.5 * lost  # isolated losses, FEC in the next packet
    assert abs(seen["gateway_audio_frames_received_total"] - sent) <= 10
    await peer.close()
