"""libopus through ctypes (media.opus): decoding as aiortc does, concealment, in-band FEC;
with real Opus packets of the committed test speech."""

from __future__ import annotations

import fractions
import functools

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc.codecs.opus import OpusDecoder as AiortcOpusDecoder
from aiortc.jitterbuffer import JitterFrame

from gateway.testing.loopback import RATE, load_clips, upsample
from media import opus

FRAME = 960


@functools.cache
def speech_packets(fec: bool = True) -> list[bytes]:
    """The first committed clip as a browser would send it: mono Opus, 20 ms, 32 kb/s,
    VoIP, in-band FEC on for 10 % loss."""
    _, audio = load_clips()[0]
    pcm = (np.clip(upsample(audio), -1.0, 1.0) * 32767).astype("<i2")
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate = 32_000
    encoder.format = "s16"
    encoder.layout = "mono"
    encoder.sample_rate = RATE
    encoder.time_base = fractions.Fraction(1, RATE)
    options = {"application": "voip"}
    if fec:
        options |= {"fec": "1", "packet_loss": "10"}
    encoder.options = options
    packets: list[bytes] = []
    for start in range(0, len(pcm) - FRAME, FRAME):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, RATE)
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


def left(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    return pcm.reshape(-1, 2)[:, 0].astype(np.float64)


def test_libopus_is_found() -> None:
    assert opus.version().startswith("libopus ")


def test_decoding_is_exactly_what_aiortc_produces() -> None:
    packets = speech_packets()
    ours = opus.OpusDecoder()
    theirs = AiortcOpusDecoder()
    for i, packet in enumerate(packets):
        (frame,) = theirs.decode(JitterFrame(packet, i * FRAME))
        assert isinstance(frame, av.AudioFrame)
        assert (frame.format.name, frame.layout.name, frame.sample_rate) == ("s16", "stereo", RATE)
        pcm = ours.decode(packet)
        assert pcm is not None
        np.testing.assert_array_equal(pcm, frame.to_ndarray().reshape(-1))


def test_packet_samples() -> None:
    assert {opus.packet_samples(p) for p in speech_packets()} == {FRAME}
    assert opus.packet_samples(b"") == -1


def test_the_browser_like_encoder_sends_fec_and_aiortcs_does_not() -> None:
    with_fec = [opus.has_fec(p) for p in speech_packets()]
    assert sum(with_fec) > 0.5 * len(with_fec)
    assert not any(opus.has_fec(p) for p in speech_packets(fec=False))
    assert not opus.has_fec(b"")


def test_our_reading_of_the_lbrr_flag_agrees_with_libopus() -> None:
    lib = opus.load_libopus()
    if not hasattr(lib, "opus_packet_has_lbrr"):
        pytest.skip(f"{opus.version()} has no opus_packet_has_lbrr to compare with")
    for packet in speech_packets() + speech_packets(fec=False):
        assert opus._has_lbrr(lib, packet) == bool(lib.opus_packet_has_lbrr(packet, len(packet)))


def test_concealment_and_recovery_give_the_length_asked_for() -> None:
    decoder = opus.OpusDecoder()
    packets = speech_packets()
    decoder.decode(packets[0])
    assert len(decoder.conceal(FRAME)) == 2 * FRAME
    assert len(decoder.conceal(3 * FRAME)) == 6 * FRAME
    assert len(decoder.recover(packets[2], FRAME)) == 2 * FRAME
    assert decoder.decode(b"\xff\xff\xff") is None  # not Opus: the caller conceals


def test_fec_rebuilds_a_lost_frame_closer_to_the_original_than_concealment() -> None:
    """Isolated losses in speech: each lost frame rebuilt from the next packet's FEC is
    nearer (in its short-term spectrum and its waveform) to what decoding it would have
    given than libopus' concealment."""
    packets = speech_packets()
    decoder = opus.OpusDecoder()
    reference = np.concatenate([pcm for p in packets if (pcm := decoder.decode(p)) is not None])
    original = left(reference)
    lost = [i for i in range(10, len(packets) - 1, 7) if opus.has_fec(packets[i + 1])]
    assert len(lost) >= 8

    def with_losses(rebuild: bool) -> npt.NDArray[np.float64]:
        decoder = opus.OpusDecoder()
        out = []
        for i, packet in enumerate(packets):
            if i in lost:
                out.append(
                    decoder.recover(packets[i + 1], FRAME) if rebuild else decoder.conceal(FRAME)
                )
            else:
                pcm = decoder.decode(packet)
                assert pcm is not None
                out.append(pcm)
        return left(np.concatenate(out))

    def spectrum(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.log10(np.abs(np.fft.rfft(x * np.hanning(len(x))))[:160] + 1.0)  # 0-8 kHz

    def distances(y: npt.NDArray[np.float64]) -> tuple[float, float]:
        spectral, error = 0.0, 0.0
        for i in lost:
            frame = slice(i * FRAME, (i + 1) * FRAME)
            spectral += float(np.mean((spectrum(y[frame]) - spectrum(original[frame])) ** 2))
            error += float(np.sum((y[frame] - original[frame]) ** 2))
        return spectral, error

    fec_spectral, fec_error = distances(with_losses(rebuild=True))
    plc_spectral, plc_error = distances(with_losses(rebuild=False))
    assert fec_spectral < 0.7 * plc_spectral
    assert fec_error < plc_error


def test_decoding_straight_to_16_khz_mono_keeps_the_rtp_clock_for_lengths() -> None:
    decoder = opus.OpusDecoder(16_000, 1)
    packets = speech_packets()
    pcm = decoder.decode(packets[0])
    assert pcm is not None
    assert len(pcm) == FRAME // 3 == decoder.length(FRAME)
    assert len(decoder.conceal(FRAME)) == FRAME // 3
    assert len(decoder.recover(packets[2], 2 * FRAME)) == 2 * FRAME // 3
    with pytest.raises(ValueError, match="44100"):
        opus.OpusDecoder(44_100, 1)


def test_a_closed_decoder_refuses() -> None:
    decoder = opus.OpusDecoder()
    decoder.close()
    decoder.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        decoder.conceal(FRAME)
