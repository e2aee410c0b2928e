"""Echo cancellation (``media/echo.py``) with real speech: the committed clips are the
gateway's spoken reply (given as sent: 48 kHz int16, 20 ms frames), and the microphone hears
it back delayed and quieter, as a laptop speaker plays it into its own microphone."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.testing.loopback import load_clips, upsample
from media import Float32Array, Int16Array
from media.echo import EchoCanceller

RATE = 16_000
STEP = 320  # 20 ms of microphone, as the listener gets it from aiortc
FAR_RATE = 48_000
FAR_STEP = 960  # 20 ms of reply, as aiortc sends it
NOISE_DB = -70.0  # a quiet room: the floor that limits the measurable echo reduction


def level_db(x: Float32Array) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def pcm(x: Float32Array) -> Int16Array:
    return np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16)


def noise(n: int, seed: int = 0) -> Float32Array:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 10 ** (NOISE_DB / 20)).astype(np.float32)


def room(delay_ms: int, gain_db: float, rt60_s: float) -> Float32Array:
    """An echo path: a bulk delay, then a direct sound and a decaying reverberant tail."""
    rng = np.random.default_rng(1)
    t = np.arange(int(0.3 * RATE)) / RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60_s)
    tail[0] = 3.0  # the direct sound
    tail *= 10 ** (gain_db / 20) / np.sqrt(np.sum(tail**2))
    return np.concatenate([np.zeros(delay_ms * RATE // 1000), tail]).astype(np.float32)


def echo_of(reply: Float32Array, path: Float32Array) -> Float32Array:
    return np.convolve(reply, path)[: len(reply)].astype(np.float32)


def run(canceller: EchoCanceller, mic: Float32Array, reply: Float32Array | None) -> Float32Array:
    """Plays the reply and the microphone through in step, 20 ms at a time; returns the
    output lined up with ``mic`` (its constant delay removed), a little shorter."""
    far = pcm(upsample(reply)) if reply is not None else None
    out = []
    for i in range(len(mic) // STEP):
        if far is not None and i * FAR_STEP < len(far):
            canceller.far_end(far[i * FAR_STEP : (i + 1) * FAR_STEP], FAR_RATE)
        out.append(canceller.near_end(mic[i * STEP : (i + 1) * STEP]))
    return np.concatenate(out)[canceller.latency_samples :]


@pytest.fixture(scope="module")
def speech() -> list[Float32Array]:
    return [audio for text, audio in load_clips() if text]


@pytest.fixture(scope="module")
def reply(speech: list[Float32Array]) -> Float32Array:
    return np.concatenate(speech)  # ~7.3 s of spoken reply


@pytest.mark.parametrize(
    ("delay_ms", "gain_db", "rt60_s", "stream_delay_ms"),
    [
        pytest.param(40, -20, 1e-4, 0, id="40ms-minus20dB"),
        pytest.param(250, -10, 0.3, 0, id="250ms-reverberant-minus10dB"),
        # Beyond AEC3's own reach (~500 ms): the delay is given.
        pytest.param(800, -10, 0.3, 400, id="800ms-given-400ms"),
    ],
)
def test_removes_the_echo_of_a_spoken_reply(
    reply: Float32Array, delay_ms: int, gain_db: float, rt60_s: float, stream_delay_ms: int
) -> None:
    echo = echo_of(reply, room(delay_ms, gain_db, rt60_s))
    mic = echo + noise(len(reply))
    out = run(EchoCanceller(stream_delay_ms=stream_delay_ms), mic, reply)

    last = slice(len(out) - 3 * RATE, len(out))  # after convergence: the last 3 s
    erle = level_db(mic[last]) - level_db(out[last])
    # Measured 31, 35 and 41 dB: the echo goes below the room's noise, which bounds them.
    assert erle >= 20, f"echo reduced by only {erle:.1f} dB"


def test_near_end_speech_passes_while_a_reply_plays(
    reply: Float32Array, speech: list[Float32Array]
) -> None:
    """Double talk, once adapted: the user talks over the reply (at 4 s) and again after it.
    The reference is what the canceller makes of the user's speech with no echo at all."""
    user = speech[0]
    during, after = 4 * RATE, len(reply) + RATE
    n = after + len(user) + RATE
    near = np.zeros(n, dtype=np.float32)
    near[during : during + len(user)] = user
    near[after : after + len(user)] = user
    echo = echo_of(
        np.concatenate([reply, np.zeros(n - len(reply), np.float32)]), room(40, -20, 1e-4)
    )
    background = noise(n)

    out = run(EchoCanceller(), echo + near + background, reply)
    clean = run(EchoCanceller(), near + background, None)

    for start, min_sdr in ((during, 6.0), (after, 20.0)):
        seg = slice(start, start + len(user))
        # Measured: -0.9 dB and 11 dB during the reply, 0.0 dB and 82 dB after it.
        assert abs(level_db(out[seg]) - level_db(clean[seg])) < 3
        sdr = level_db(clean[seg]) - level_db(out[seg] - clean[seg])
        assert sdr >= min_sdr, f"user's speech at {start / RATE:.1f} s distorted: {sdr:.1f} dB"


@pytest.mark.parametrize("warm", [False, True])
def test_without_echo_a_person_talking_over_the_reply_is_heard_only_when_warmed_up(
    reply: Float32Array, speech: list[Float32Array], warm: bool
) -> None:
    """A microphone that hears no echo (the browser cancelled it, or headphones): AEC3,
    fresh, suppresses it while the reply plays until its transparent mode engages; warmed
    up on echo-free speech, it lets the person through from the first second."""
    user = speech[0]
    during = RATE  # the person talks one second into the reply
    mic = noise(len(reply))
    mic[during : during + len(user)] += user
    canceller = EchoCanceller()
    if warm:
        canceller.warm_up(pcm(np.concatenate(speech)), RATE)
    out = run(canceller, mic, reply)
    seg = slice(during, during + len(user))
    lost = level_db(mic[seg]) - level_db(out[seg])
    if warm:
        assert lost < 3, f"the person was cut by {lost:.1f} dB"
    else:  # measured 10-30 dB: why sessions whose microphone cancels echo start warm
        assert lost > 6, f"only {lost:.1f} dB: AEC3's cold start changed; revisit warm_up"


def test_warmed_up_it_still_cancels_an_echo(
    reply: Float32Array, speech: list[Float32Array]
) -> None:
    echo = echo_of(reply, room(40, -20, 1e-4))
    mic = echo + noise(len(reply))
    canceller = EchoCanceller()
    canceller.warm_up(pcm(np.concatenate(speech)), RATE)
    out = run(canceller, mic, reply)
    first = slice(0, RATE // 2)
    last = slice(len(out) - 3 * RATE, len(out))
    assert level_db(mic[first]) - level_db(out[first]) >= 10  # from the first half second
    assert level_db(mic[last]) - level_db(out[last]) >= 20


def test_without_a_reply_the_microphone_passes_through(speech: list[Float32Array]) -> None:
    mic = np.concatenate(speech) + noise(sum(len(s) for s in speech))
    out = run(EchoCanceller(), mic, None)
    # Only the high-pass filter acts (-0.2 dB on this speech).
    assert abs(level_db(out) - level_db(mic[: len(out)])) < 0.5


@pytest.mark.parametrize("rate", [8_000, 16_000, 32_000, 48_000])
def test_output_is_the_input_a_constant_delay_later(rate: int) -> None:
    rng = np.random.default_rng(2)
    mic = (rng.standard_normal(rate // 2) * 0.1).astype(np.float32)
    canceller = EchoCanceller(sample_rate=rate)
    step = rate // 50
    out = np.concatenate([canceller.near_end(mic[i : i + step]) for i in range(0, len(mic), step)])
    lags = range(rate // 20)
    best = max(lags, key=lambda lag: float(np.dot(mic[: len(mic) - lag], out[lag:])))
    assert best == canceller.latency_samples
    if rate == RATE:
        assert canceller.latency_samples == 288  # 18 ms
        # Silence until the input comes out (at other rates AEC3's resampling and band
        # splitting filters ring ahead of their peak).
        assert not out[: canceller.latency_samples].any()


def test_any_chunk_size_returns_as_many_samples(speech: list[Float32Array]) -> None:
    mic = speech[1]
    steady = EchoCanceller()
    expected = np.concatenate(
        [steady.near_end(mic[i : i + STEP]) for i in range(0, len(mic), STEP)]
    )

    canceller = EchoCanceller()
    rng = np.random.default_rng(3)
    pieces, at = [], 0
    while at < len(mic):
        size = int(rng.choice([0, 1, 159, 160, 161, 320, 777, 2000]))
        chunk = mic[at : at + size]
        got = canceller.near_end(chunk)
        assert got.shape == chunk.shape
        assert got.dtype == np.float32
        pieces.append(got)
        at += size
    np.testing.assert_array_equal(np.concatenate(pieces), expected)


def test_reply_audio_given_faster_than_played_is_bounded() -> None:
    canceller = EchoCanceller()
    canceller.near_end(np.zeros(STEP, dtype=np.float32))
    for _ in range(150):  # 3 s at 16 kHz, 20 ms at a time, and the microphone stalled
        canceller.far_end(np.full(STEP, 1000, dtype=np.int16), RATE)
    assert canceller.far_end_dropped == 300 - 100  # 1 s of 10 ms frames is kept


def test_reply_played_before_the_microphone_flows_is_not_paired(reply: Float32Array) -> None:
    """The reply track may start before the first microphone frame arrives; held back, that
    audio would delay the reference for good, past the echo it should cancel."""
    head = RATE // 2 // STEP  # 0.5 s of reply frames with no microphone yet
    far = pcm(upsample(reply))
    mic = (echo_of(reply, room(40, -20, 1e-4)) + noise(len(reply)))[head * STEP :]
    canceller = EchoCanceller()
    out = []
    for i in range(len(reply) // STEP):
        canceller.far_end(far[i * FAR_STEP : (i + 1) * FAR_STEP], FAR_RATE)
        if i >= head:
            j = i - head
            out.append(canceller.near_end(mic[j * STEP : (j + 1) * STEP]))
    cleaned = np.concatenate(out)[canceller.latency_samples :]
    last = slice(len(cleaned) - 3 * RATE, len(cleaned))
    assert level_db(mic[last]) - level_db(cleaned[last]) >= 20
    assert canceller.far_end_dropped == 0


def lossy_run(
    canceller: EchoCanceller,
    mic: Float32Array,
    reply: Float32Array,
    lost: list[bool],
    *,
    report: bool = True,
) -> tuple[Float32Array, Float32Array]:
    """Like :func:`run`, but the 20 ms microphone frames marked in ``lost`` never arrive.
    Returns the microphone audio that did arrive and the output, lined up."""
    far = pcm(upsample(reply))
    arrived, out = [], []
    for i in range(len(mic) // STEP):
        if i * FAR_STEP < len(far):
            canceller.far_end(far[i * FAR_STEP : (i + 1) * FAR_STEP], FAR_RATE)
        if lost[i]:
            if report:
                canceller.near_end_lost(STEP)
            continue
        arrived.append(mic[i * STEP : (i + 1) * STEP])
        out.append(canceller.near_end(arrived[-1]))
    cleaned = np.concatenate(out)[canceller.latency_samples :]
    return np.concatenate(arrived)[: len(cleaned)], cleaned


def test_removes_the_echo_when_microphone_frames_are_lost(reply: Float32Array) -> None:
    """aiortc skips lost frames; DESIGN.md measured 25 % of frames gone at 5 % packet loss."""
    mic = echo_of(reply, room(250, -10, 0.3)) + noise(len(reply))
    lost = list(np.random.default_rng(5).random(len(mic) // STEP) < 0.25)
    arrived, cleaned = lossy_run(EchoCanceller(), mic, reply, lost)
    last = slice(len(cleaned) - 3 * RATE, len(cleaned))
    erle = level_db(arrived[last]) - level_db(cleaned[last])
    # Measured ~44 dB; with the losses unreported, ~4 dB.
    assert erle >= 20, f"echo reduced by only {erle:.1f} dB"


def test_stand_ins_for_lost_audio_are_cut_exactly(
    reply: Float32Array, speech: list[Float32Array]
) -> None:
    """Reporting a loss is the same as giving silence there and cutting its output."""
    n = len(reply)
    mic = echo_of(reply, room(40, -20, 1e-4)) + noise(n)
    mic[RATE : RATE + len(speech[2])] += speech[2]
    lost = [i % 7 == 3 for i in range(n // STEP)]
    _, with_losses = lossy_run(EchoCanceller(), mic, reply, lost)

    holes = mic.copy()
    for i, gone in enumerate(lost):
        if gone:
            holes[i * STEP : (i + 1) * STEP] = 0
    with_silence = run(EchoCanceller(), holes, reply)
    kept = np.repeat(np.logical_not(lost), STEP)[: len(with_silence)]
    np.testing.assert_array_equal(with_losses, with_silence[kept][: len(with_losses)])


def test_reset_forgets_the_reply(reply: Float32Array, speech: list[Float32Array]) -> None:
    canceller = EchoCanceller()
    run(canceller, echo_of(reply, room(40, -20, 1e-4)), reply)
    canceller.far_end(pcm(reply[:RATE]), RATE)  # still waiting when reset comes
    canceller.reset()
    mic = speech[2]
    fresh = EchoCanceller()
    np.testing.assert_array_equal(canceller.near_end(mic), fresh.near_end(mic))


def test_rejects_what_it_cannot_process() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        EchoCanceller(sample_rate=44_100)
    with pytest.raises(ValueError, match="stream_delay_ms"):
        EchoCanceller(stream_delay_ms=-10)
    canceller = EchoCanceller()
    with pytest.raises(ValueError, match="mono"):
        canceller.far_end(np.zeros((2, FAR_STEP), dtype=np.int16), FAR_RATE)
    with pytest.raises(ValueError, match="mono"):
        canceller.near_end(np.zeros((2, STEP), dtype=np.float32))
