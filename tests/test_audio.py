"""Audio in (``media/audio.py``): aiortc's 48 kHz stereo s16 frames of 960 samples become
16 kHz mono float32, continuously across frames, and are re-cut into 512-sample chunks."""

from __future__ import annotations

import os

import av
import numpy as np
import numpy.typing as npt
import pytest

from media import Float32Array, Int16Array
from media.audio import Chunker, MonoResampler, Resampler, SampleClock

RATE_IN = 48_000
FRAME = 960  # 20 ms, as aiortc decodes Opus


def stereo_frame(left: Int16Array, right: Int16Array, pts: int | None) -> av.AudioFrame:
    interleaved = np.stack([left, right], axis=1).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
    frame.sample_rate = RATE_IN
    frame.pts = pts
    return frame


def sine(frequency: float, amplitude: float, samples: int, rate: int) -> npt.NDArray[np.float64]:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(samples) / rate)


def pcm(signal: npt.NDArray[np.float64]) -> Int16Array:
    return np.round(signal * 32767).astype(np.int16)


def resample_frames(
    left: Int16Array, right: Int16Array, pts: list[int | None] | None = None
) -> list[Float32Array]:
    resampler = MonoResampler()
    count = len(left) // FRAME
    stamps = pts if pts is not None else [i * FRAME for i in range(count)]
    return [
        resampler.resample(
            stereo_frame(
                left[i * FRAME : (i + 1) * FRAME], right[i * FRAME : (i + 1) * FRAME], stamps[i]
            )
        )
        for i in range(count)
    ]


def test_each_20_ms_frame_becomes_320_float32_samples() -> None:
    signal = pcm(sine(440, 0.5, 50 * FRAME, RATE_IN))
    outputs = resample_frames(signal, signal)
    for out in outputs:
        assert out.dtype == np.float32
        assert out.ndim == 1
    sizes = [len(out) for out in outputs]
    # The filter holds back a few samples at the very start (16 with this FFmpeg), then
    # every frame gives exactly a third of its samples.
    assert 320 - 32 <= sizes[0] < 320
    assert sizes[1:] == [320] * 49


def test_resampling_is_continuous_across_frames() -> None:
    left = pcm(sine(440, 0.5, 50 * FRAME, RATE_IN))
    right = pcm(sine(440, 0.25, 50 * FRAME, RATE_IN))
    per_frame = np.concatenate(resample_frames(left, right))

    whole = MonoResampler().resample(
        stereo_frame(left, right, 0)
    )  # the same audio as one frame: no frame boundaries at all
    assert len(whole) >= len(per_frame)
    np.testing.assert_allclose(per_frame, whole[: len(per_frame)], atol=1e-6)

    # And it is the same 440 Hz sine at 16 kHz, with no phase shift or glitch at any of
    # the 49 frame boundaries (the first few samples are the filter settling).
    amplitude = float(np.max(np.abs(per_frame[100:])))
    expected = sine(440, amplitude, len(per_frame), 16_000)
    assert np.max(np.abs(per_frame[100:] - expected[100:])) < 2e-3


def test_a_jump_in_timestamps_changes_nothing() -> None:
    """aiortc's pts count RTP time; after packet loss they jump. The output must not gain
    inserted silence or lose samples. (PyAV 18's resampler ignores pts anyway, so this
    guards the property rather than MonoResampler's clearing of them.)"""
    signal = pcm(sine(300, 0.5, 20 * FRAME, RATE_IN))
    steady = resample_frames(signal, signal)
    jumping: list[int | None] = [i * FRAME + (48_000 if i >= 10 else 0) for i in range(20)]
    jumped = resample_frames(signal, signal, jumping)
    assert [len(out) for out in jumped] == [len(out) for out in steady]
    np.testing.assert_array_equal(np.concatenate(jumped), np.concatenate(steady))


def test_identical_channels_keep_their_level() -> None:
    level = 16384  # 0.5 of full scale
    block = np.full(4 * FRAME, level, np.int16)
    out = np.concatenate(resample_frames(block, block))
    np.testing.assert_allclose(out[-100:], 0.5, atol=1e-3)


def test_mono_16_khz_passes_without_a_filter_as_ffmpeg_would_convert_it() -> None:
    """What the gateway's receive path decodes to: converted, not resampled, with exactly
    the samples FFmpeg's s16 → float conversion gives, none held back."""
    rng = np.random.default_rng(5)
    resampler, through_ffmpeg = MonoResampler(), Resampler("flt", "mono", 16_000)
    for _ in range(5):
        block = rng.integers(-32768, 32767, 320).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16_000
        ours = resampler.resample(frame)
        assert resampler._resampler._graph is None  # no filter graph was built
        expected = np.concatenate(
            [f.to_ndarray().reshape(-1) for f in through_ffmpeg.resample(frame)]
        )
        assert ours.dtype == np.float32
        assert len(ours) == 320
        np.testing.assert_array_equal(ours[: len(expected)], expected)


# --- Chunker ---


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_resampler_starts_no_thread() -> None:
    """PyAV's own resampler gives its filter graph a pool of one thread per core, held until
    the garbage collector reaches it: two idle threads per session here (found by the soak
    benchmark). The gateway's runs its graph on the calling thread."""
    tone = sine(440, 8000, 4 * FRAME, RATE_IN).astype(np.int16)
    before = _threads()
    resamplers = [MonoResampler() for _ in range(4)]
    for resampler in resamplers:
        resampler.resample(stereo_frame(tone, tone, None))
    assert _threads() == before


@pytest.mark.parametrize(("rate_in", "rate_out"), [(22_050, 48_000), (48_000, 16_000)])
def test_the_resampler_converts_as_pyav_does(rate_in: int, rate_out: int) -> None:
    """Same FFmpeg conversion, same samples, including those the filter holds back."""
    rng = np.random.default_rng(3)
    chunks = [rng.integers(-9000, 9000, n).astype(np.int16) for n in (441, 1000, 17, 2205)]

    def run(resampler: Resampler | av.AudioResampler) -> Int16Array:
        out = []
        for chunk in [*chunks, None]:
            frame = None
            if chunk is not None:
                frame = av.AudioFrame.from_ndarray(
                    chunk.reshape(1, -1), format="s16", layout="mono"
                )
                frame.sample_rate = rate_in
            out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        return np.concatenate(out)

    ours = run(Resampler("s16", "mono", rate_out))
    theirs = run(av.AudioResampler(format="s16", layout="mono", rate=rate_out))
    np.testing.assert_array_equal(ours, theirs)
    assert len(ours) == pytest.approx(sum(map(len, chunks)) * rate_out / rate_in, abs=2)


def test_the_resampler_starts_over_on_another_input_format() -> None:
    resampler = Resampler("flt", "mono", 16_000)
    tone = sine(440, 8000, FRAME, RATE_IN).astype(np.int16)
    assert resampler.resample(stereo_frame(tone, tone, None))
    mono = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
    mono.sample_rate = 24_000
    out = resampler.resample(mono)  # PyAV's raises ValueError here
    assert out
    assert all(f.sample_rate == 16_000 and f.layout.name == "mono" for f in out)


def test_chunker_recuts_exactly_and_keeps_the_remainder() -> None:
    data = np.arange(3000, dtype=np.float32)
    chunker = Chunker()
    pieces = [100, 412, 1000, 24, 0, 600]  # 2136 samples
    got: list[Float32Array] = []
    counts = []
    offset = 0
    for size in pieces:
        out = chunker.push(data[offset : offset + size])
        offset += size
        counts.append(len(out))
        got += out
    assert counts == [0, 1, 1, 1, 0, 1]
    for chunk in got:
        assert chunk.shape == (512,)
        assert chunk.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(got), data[:2048])

    # 88 samples are pending: 424 more make exactly one more chunk, in order.
    (last,) = chunker.push(data[2136:2560])
    np.testing.assert_array_equal(last, data[2048:2560])
    assert chunker.push(np.zeros(0, np.float32)) == []


def test_chunker_cuts_one_long_push_into_many() -> None:
    data = np.arange(5 * 512 + 7, dtype=np.float32)
    chunker = Chunker()
    out = chunker.push(data)
    assert len(out) == 5
    np.testing.assert_array_equal(np.concatenate(out), data[: 5 * 512])
    (nxt,) = chunker.push(np.full(505, -1, np.float32))
    np.testing.assert_array_equal(nxt[:7], data[-7:])
    np.testing.assert_array_equal(nxt[7:], np.full(505, -1, np.float32))


def test_chunker_with_another_size() -> None:
    chunker = Chunker(320)
    out = chunker.push(np.arange(1000, dtype=np.float32))
    assert [len(c) for c in out] == [320, 320, 320]
    (nxt,) = chunker.push(np.arange(1000, 1280, dtype=np.float32))
    np.testing.assert_array_equal(nxt, np.arange(960, 1280, dtype=np.float32))


def test_sample_clock_maps_positions_to_arrival_times() -> None:
    clock = SampleClock(rate=16_000)
    assert clock.time_of(0) is None  # nothing has arrived yet
    for frame in range(1, 6):  # 20 ms frames of 320 samples arriving every 20 ms
        clock.mark(frame * 320, at=10.0 + 0.02 * frame)
    # The last sample of frame 3 arrived with it; one 10 ms before its end, 10 ms earlier.
    assert clock.time_of(960) == pytest.approx(10.06)
    assert clock.time_of(800) == pytest.approx(10.05)
    assert clock.time_of(1) == pytest.approx(10.02 - 319 / 16_000)
    # Not arrived yet: the latest arrival is the best answer there is.
    assert clock.time_of(10_000) == pytest.approx(10.10)


def test_sample_clock_forgets_beyond_its_horizon() -> None:
    clock = SampleClock(rate=16_000, horizon_frames=2)
    for frame in range(1, 5):
        clock.mark(frame * 320, at=float(frame))
    assert clock.time_of(1280) == pytest.approx(4.0)
    assert clock.time_of(960) == pytest.approx(3.0)


def test_aiortc_still_holds_four_audio_frames_in_its_jitter_buffer() -> None:
    # media.listener takes this hold out of the arrival clock ("end of speech" timings);
    # an aiortc release that changes it must change JITTER_PREFETCH_FRAMES too.
    import inspect

    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from media.listener import JITTER_PREFETCH_FRAMES

    source = inspect.getsource(RTCRtpReceiver.__init__)
    assert f"JitterBuffer(capacity=16, prefetch={JITTER_PREFETCH_FRAMES})" in source
