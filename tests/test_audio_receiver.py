"""The concealing audio receiver (signalling.audio_receiver): applied to one real aiortc
RTCRtpReceiver, fed RTP packets through aiortc's own ``_handle_rtp_packet``."""

from __future__ import annotations

import asyncio
import fractions
import random
from typing import Any, cast

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.codecs.opus import OpusDecoder as AiortcOpusDecoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from media import opus
from signalling import audio_receiver
from signalling.audio_receiver import ConcealingJitterBuffer, adapt_receiver
from tests.test_opus import FRAME, speech_packets

OPUS_PT = 111
PCMU_PT = 0
SSRC = 0x1234


class Counts:
    def __init__(self) -> None:
        self.recovered = 0
        self.concealed = 0
        self.late = 0
        self.dropped = 0

    def frame_recovered(self) -> None:
        self.recovered += 1

    def frame_concealed(self) -> None:
        self.concealed += 1

    def packet_late(self) -> None:
        self.late += 1

    def frame_dropped(self) -> None:
        self.dropped += 1


class _Transport:
    state = "new"  # all RTCRtpReceiver's constructor looks at


def track_of(transceiver: RTCRtpTransceiver) -> RemoteStreamTrack:
    track = transceiver.receiver._track
    assert track is not None
    return track


def make_transceiver() -> RTCRtpTransceiver:
    """A receiving audio transceiver as negotiation leaves it (Opus and PCMU), not started."""
    receiver = RTCRtpReceiver("audio", cast(Any, _Transport()))
    receiver._track = RemoteStreamTrack(kind="audio")
    codecs = [
        RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48_000, channels=2, payloadType=OPUS_PT
        ),
        RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=PCMU_PT),
    ]
    vars(receiver)["_RTCRtpReceiver__codecs"].update({c.payloadType: c for c in codecs})
    transceiver = RTCRtpTransceiver("audio", receiver, cast(Any, None))
    transceiver._codecs = codecs
    return transceiver


def rtp(index: int, payload: bytes, *, first_seq: int = 65_500, pt: int = OPUS_PT) -> RtpPacket:
    return RtpPacket(
        payload_type=pt,
        sequence_number=(first_seq + index) % 0x10000,
        timestamp=(4_000_000_000 + index * FRAME) % 0x1_0000_0000,
        ssrc=SSRC,
        payload=payload,
    )


def drops(count: int, rate: float, seed: int = 3) -> set[int]:
    """Indices a lossy link drops (never the first or the last)."""
    rng = random.Random(seed)
    return {i for i in range(1, count - 1) if rng.random() < rate}


async def feed(receiver: RTCRtpReceiver, packets: list[RtpPacket]) -> None:
    for packet in packets:
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)


async def drain(track: RemoteStreamTrack, wait_s: float = 0.3) -> list[av.AudioFrame]:
    await asyncio.sleep(wait_s)  # the last frames held come out once nothing arrives
    frames = []
    while not track._queue.empty():
        frames.append(track._queue.get_nowait())
    return frames


def test_supported_releases() -> None:
    assert audio_receiver.unsupported_reason({"aiortc": "1.16.0"}) is None
    for version in ("1.15.2", "1.17.0", "2.0.0", "unknown"):
        reason = audio_receiver.unsupported_reason({"aiortc": version})
        assert reason is not None
        assert f"aiortc {version} is installed" in reason
    assert audio_receiver.check_support()


async def test_adapting_replaces_the_jitter_buffer_and_offers_fec() -> None:
    transceiver = make_transceiver()
    assert adapt_receiver(transceiver)
    buffer = vars(transceiver.receiver)["_RTCRtpReceiver__jitter_buffer"]
    assert isinstance(buffer, ConcealingJitterBuffer)
    assert adapt_receiver(transceiver)  # again: nothing changes
    assert vars(transceiver.receiver)["_RTCRtpReceiver__jitter_buffer"] is buffer
    opus_codec, pcmu = transceiver._codecs
    assert opus_codec.parameters == {"useinbandfec": 1}
    assert pcmu.parameters == {}
    # Nothing on the class or in aiortc's modules changed.
    assert isinstance(
        vars(make_transceiver().receiver)["_RTCRtpReceiver__jitter_buffer"], JitterBuffer
    )


async def test_an_untested_receiver_is_left_as_it_is() -> None:
    transceiver = make_transceiver()
    del vars(transceiver.receiver)["_RTCRtpReceiver__jitter_buffer"]
    assert not adapt_receiver(transceiver)
    assert transceiver._codecs[0].parameters == {}


async def test_lost_packets_are_rebuilt_or_concealed_on_a_continuous_timeline() -> None:
    payloads = speech_packets()
    dropped = drops(len(payloads), 0.1)
    transceiver = make_transceiver()
    counts = Counts()
    assert adapt_receiver(transceiver, counts)
    receiver = transceiver.receiver
    await feed(receiver, [rtp(i, p) for i, p in enumerate(payloads) if i not in dropped])
    frames = await drain(track_of(transceiver))

    assert len(frames) == len(payloads)
    assert [f.pts for f in frames] == [i * FRAME for i in range(len(payloads))]
    for frame in frames:
        assert (frame.format.name, frame.layout.name) == ("s16", "stereo")
        assert (frame.sample_rate, frame.samples, frame.time_base) == (
            48_000,
            FRAME,
            fractions.Fraction(1, 48_000),
        )
    assert counts.recovered + counts.concealed == len(dropped)
    fec_available = sum(
        1 for i in dropped if i + 1 not in dropped and opus.has_fec(payloads[i + 1])
    )
    assert counts.recovered == fec_available > 0
    # Frames that arrived are decoded exactly as aiortc decodes them.
    reference = AiortcOpusDecoder()
    (first,) = reference.decode(JitterFrame(payloads[0], 0))
    assert isinstance(first, av.AudioFrame)
    assert frames[0].to_ndarray().tobytes() == first.to_ndarray().tobytes()


async def test_frames_can_be_decoded_straight_to_16_khz_mono() -> None:
    """What the gateway asks for: its listener's form, with the same timeline (pts in
    samples of 16 kHz), losses concealed as at 48 kHz."""
    payloads = speech_packets()
    dropped = drops(len(payloads), 0.1)
    transceiver = make_transceiver()
    counts = Counts()
    assert adapt_receiver(transceiver, counts, rate=16_000, channels=1)
    await feed(
        transceiver.receiver, [rtp(i, p) for i, p in enumerate(payloads) if i not in dropped]
    )
    frames = await drain(track_of(transceiver))

    third = FRAME // 3
    assert [f.pts for f in frames] == [i * third for i in range(len(payloads))]
    for frame in frames:
        assert (frame.format.name, frame.layout.name) == ("s16", "mono")
        assert (frame.sample_rate, frame.samples, frame.time_base) == (
            16_000,
            third,
            fractions.Fraction(1, 16_000),
        )
    assert counts.recovered + counts.concealed == len(dropped)
    # The same speech as decoding at 48 kHz and resampling: compare energy per frame.
    wide = opus.OpusDecoder()
    narrow = opus.OpusDecoder(16_000, 1)
    for payload in payloads[:50]:
        full, straight = wide.decode(payload), narrow.decode(payload)
        assert full is not None
        assert straight is not None
        assert len(straight) == third
        level = np.sqrt(np.mean(full.astype(np.float64) ** 2))
        assert np.sqrt(np.mean(straight.astype(np.float64) ** 2)) == pytest.approx(
            level, rel=0.25, abs=30
        )


async def test_aiortcs_own_jitter_buffer_loses_more_than_the_network() -> None:
    """What the adapter replaces, on the same packets: frames lost beyond those dropped."""
    payloads = speech_packets()
    dropped = drops(len(payloads), 0.1)
    buffer = JitterBuffer(capacity=16, prefetch=4)
    delivered = 0
    for i, payload in enumerate(payloads):
        if i in dropped:
            continue
        packet = rtp(i, payload)
        packet._data = payload  # type: ignore[attr-defined]
        _, frame = buffer.add(packet)
        delivered += frame is not None
    assert len(payloads) - delivered > 2 * len(dropped)


async def test_reordered_packets_are_put_back_and_late_ones_counted() -> None:
    payloads = speech_packets()[:60]
    order = list(range(60))
    for i in range(5, 55, 9):
        order[i], order[i + 2] = order[i + 2], order[i]  # two places late: inside the window
    transceiver = make_transceiver()
    counts = Counts()
    adapt_receiver(transceiver, counts)
    packets = [rtp(i, payloads[i]) for i in order if i != 30]
    await feed(transceiver.receiver, packets[:40])
    await feed(transceiver.receiver, [rtp(30, payloads[30])])  # 10 packets late: too late
    await feed(transceiver.receiver, packets[40:])
    frames = await drain(track_of(transceiver))
    assert [f.pts for f in frames] == [i * FRAME for i in range(60)]
    assert (counts.recovered + counts.concealed, counts.late) == (1, 1)


async def test_other_codecs_take_aiortcs_path() -> None:
    transceiver = make_transceiver()
    adapt_receiver(transceiver)
    buffer = vars(transceiver.receiver)["_RTCRtpReceiver__jitter_buffer"]
    results = []
    for i in range(6):
        packet = rtp(i, b"\xff" * 160, pt=PCMU_PT)
        packet._data = packet.payload  # type: ignore[attr-defined]
        results.append(buffer.add(packet))
    assert [frame is not None for _, frame in results] == [False] * 4 + [True] * 2


async def test_a_listener_far_behind_gets_the_newest_five_seconds() -> None:
    payloads = speech_packets()
    transceiver = make_transceiver()
    counts = Counts()
    adapt_receiver(transceiver, counts)
    count = audio_receiver.MAX_BACKLOG_FRAMES + 50  # nobody reads the track meanwhile
    await feed(transceiver.receiver, [rtp(i, payloads[i % len(payloads)]) for i in range(count)])
    frames = await drain(track_of(transceiver))
    assert len(frames) == audio_receiver.MAX_BACKLOG_FRAMES
    assert counts.dropped == 50
    assert frames[0].pts == 50 * FRAME  # the oldest went first
    assert frames[-1].pts == (count - 1) * FRAME


async def test_a_stopped_track_gets_no_more_frames() -> None:
    transceiver = make_transceiver()
    adapt_receiver(transceiver)
    track = track_of(transceiver)
    track.stop()
    await feed(transceiver.receiver, [rtp(i, p) for i, p in enumerate(speech_packets()[:10])])
    assert await drain(track) == []


async def test_unsupported_aiortc_leaves_peer_connections_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audio_receiver, "check_support", lambda: False)
    pc = RTCPeerConnection()
    audio_receiver.adapt_audio_receivers(pc)
    assert not pc.listeners("track")
    await pc.close()
