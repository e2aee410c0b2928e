"""PCM over ``/ws`` (``media/pcm.py``): frames checked exactly, resampled both ways without
losing the signal, a token bucket that lets real time through and drops what runs ahead,
and the silence a stopped stream owes. Pure: times are passed in."""

from __future__ import annotations

import numpy as np
import pytest

from media.pcm import (
    MAX_FRAME_BYTES,
    AudioBudget,
    AudioFrameTooLarge,
    BadAudioFrame,
    PcmDecoder,
    PcmEncoder,
    StreamGap,
    Verdict,
    pcm_samples,
)
from signalling.protocol import SAMPLE_RATES


def tone(rate: int, seconds: float, hz: float = 440.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


# --- frames ---


def test_a_frame_is_little_endian_16_bit_samples() -> None:
    samples = pcm_samples(b"\x01\x00\xff\xff\x00\x80\xff\x7f", 16_000)
    assert samples.dtype == np.int16
    assert samples.tolist() == [1, -1, -32768, 32767]
    assert samples.flags.writeable  # a copy, not a view of the message
    assert pcm_samples(b"", 16_000).tolist() == []


def test_an_odd_frame_is_not_whole_samples() -> None:
    with pytest.raises(BadAudioFrame, match="601 bytes is not whole samples") as caught:
        pcm_samples(bytes(601), 16_000)
    assert caught.value.code == "bad_audio"


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_a_frame_holds_at_most_a_second(rate: int) -> None:
    assert len(pcm_samples(bytes(2 * rate), rate)) == rate
    with pytest.raises(AudioFrameTooLarge, match="over the limit of 1000 ms") as caught:
        pcm_samples(bytes(2 * rate + 2), rate)
    assert caught.value.code == "audio_too_large"
    assert f"at {rate} Hz" in str(caught.value)


def test_the_largest_frame_is_a_second_at_48_khz() -> None:
    assert MAX_FRAME_BYTES == 96_000 == 2 * max(SAMPLE_RATES)


# --- resampling ---


def test_16_khz_in_is_scaled_only() -> None:
    decoder = PcmDecoder(16_000)
    out = decoder.decode(np.array([16384, -32768, 0], dtype=np.int16))
    assert out.dtype == np.float32
    assert out.tolist() == [0.5, -1.0, 0.0]


@pytest.mark.parametrize("rate", [8_000, 24_000, 48_000])
def test_other_rates_in_become_16_khz_across_frames(rate: int) -> None:
    decoder = PcmDecoder(rate)
    pcm = tone(rate, 1.0)
    step = rate // 50  # 20 ms frames: the filter keeps its state from one to the next
    out = np.concatenate([decoder.decode(pcm[i : i + step]) for i in range(0, len(pcm), step)])
    assert out.dtype == np.float32
    assert 16_000 - 64 <= len(out) <= 16_000  # all but what the filter holds back
    middle = out[1000:15000]
    assert peak_hz(middle, 16_000) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    # No clicks at frame boundaries: every step is a sine's step, never a jump.
    assert np.max(np.abs(np.diff(middle))) < 2 * np.pi * 440 / 16_000 * 0.5 * 1.05


def test_48_khz_out_is_the_samples_as_bytes() -> None:
    samples = np.array([1, -1, 300], dtype=np.int16)
    encoder = PcmEncoder(48_000)
    assert encoder.encode(samples) == b"\x01\x00\xff\xff\x2c\x01"
    assert encoder.drain() == b""


@pytest.mark.parametrize("rate", [8_000, 16_000, 24_000])
def test_48_khz_out_becomes_the_session_rate(rate: int) -> None:
    encoder = PcmEncoder(rate)
    pcm = tone(48_000, 1.0, hz=300)
    parts = [encoder.encode(pcm[i : i + 960]) for i in range(0, len(pcm), 960)]
    parts.append(encoder.drain())
    assert all(len(p) % 2 == 0 for p in parts)
    out = np.frombuffer(b"".join(parts), dtype="<i2")
    assert len(out) == rate  # drained: every sample comes out
    middle = out[rate // 10 : -rate // 10]
    assert peak_hz(middle, rate) == pytest.approx(300, abs=2)
    assert np.sqrt(np.mean(middle.astype(np.float64) ** 2)) == pytest.approx(
        0.5 * 32767 / np.sqrt(2), rel=0.02
    )
    again = encoder.encode(pcm[:960])  # after a drain, a new run starts
    assert 0 < len(again) <= 2 * rate // 50


# --- the budget ---


def test_a_burst_passes_and_then_real_time_only() -> None:
    budget = AudioBudget(burst_s=2.0, speed=1.0)
    frame = 0.25
    assert [budget.admit(frame, 10.0) for _ in range(8)] == [Verdict.ADMIT] * 8
    assert budget.available_s == 0.0
    assert budget.admit(frame, 10.0) is Verdict.OVERLOAD  # told once...
    assert budget.admit(frame, 10.0) is Verdict.DROP  # ...not again
    assert budget.admit(frame, 10.125) is Verdict.DROP  # half a frame's time: not enough
    assert budget.admit(frame, 10.25) is Verdict.ADMIT  # 0.125 + 0.125 s refilled
    assert budget.dropped_s == 0.75


def test_an_overload_ends_when_the_bucket_is_full_again() -> None:
    budget = AudioBudget(burst_s=1.0, speed=1.0)
    assert budget.admit(1.0, 0.0) is Verdict.ADMIT
    assert budget.admit(0.5, 0.0) is Verdict.OVERLOAD
    assert budget.admit(0.5, 0.5) is Verdict.ADMIT  # keeping up, but not yet full
    assert budget.admit(0.75, 0.5) is Verdict.DROP  # the same overload
    assert budget.admit(0.5, 1.5) is Verdict.ADMIT  # full at 1.5: the overload is over
    assert budget.admit(1.0, 1.5) is Verdict.OVERLOAD  # a new one is reported


def test_real_time_streams_are_never_refused() -> None:
    budget = AudioBudget()
    arrived = 0.0
    for n in range(50 * 600):  # ten minutes of 20 ms frames; some 40 ms late, and those
        # after them arrive at once
        arrived = max(arrived, n * 0.02 + (0.04 if n % 7 == 0 else 0.0))
        assert budget.admit(0.02, arrived) is Verdict.ADMIT, n
    # A device whose clock runs 1 % fast, for an hour.
    budget, now = AudioBudget(), 0.0
    for _ in range(60 * 60):
        assert budget.admit(1.01, now) is Verdict.ADMIT
        now += 1.0


def test_a_faster_stream_keeps_the_budget_s_pace() -> None:
    budget = AudioBudget(burst_s=2.0, speed=1.05)
    admitted = 0.0
    for n in range(1000):  # 20 ms frames at twice real time for 10 s
        if budget.admit(0.02, n * 0.01) is Verdict.ADMIT:
            admitted += 0.02
    assert admitted == pytest.approx(2.0 + 1.05 * 9.99, abs=0.021)


def test_a_budget_needs_positive_settings() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        AudioBudget(burst_s=0.0)


# --- gaps ---


def test_a_stopped_stream_owes_silence_after_its_grace() -> None:
    gap = StreamGap(grace_s=0.25)
    assert gap.due() is None  # nothing has arrived yet
    assert gap.owed(5.0) == 0.0
    gap.arrived(0.5, 10.0)  # half a second, ending at 10.0: the next is due at 10.5
    assert gap.due() == 10.75
    assert gap.owed(10.5) == 0.0
    assert gap.owed(10.75) == 0.75  # all of it since the last frame ended
    gap.filled(10.75)
    assert gap.owed(10.875) == 0.125  # then as time goes on
    gap.filled(10.875)
    gap.arrived(0.25, 11.0)  # a frame again: the clock starts over
    assert gap.owed(11.25) == 0.0
    assert gap.owed(11.5) == 0.5
