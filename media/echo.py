"""Acoustic echo cancellation: removes the gateway's own spoken reply from the microphone.

On a laptop speaker the reply is played, picked up by the microphone and sent back; without
this the VAD hears the gateway talking and Whisper transcribes it. The canceller is the
WebRTC audio processing module (AEC3), run in-process by the ``livekit`` package's native
library: no server, no network. The reply audio as it is sent is the far-end reference.

Only echo cancellation and the high-pass filter are on. Noise suppression and gain control
reshape the speech Whisper was trained on (and the levels the VAD sees), so they stay off.
The high-pass filter (DC and rumble below ~80 Hz) is one AEC3 turns on by itself anyway.

The module works on 10 ms frames in lockstep: each microphone frame is processed right
after one far-end frame (or silence when no reply audio is waiting), as a sound card's
duplex callback delivers them. The far end is fed from the first frame, silence included:
AEC3 holds the microphone 4 ms longer once it has seen any far-end audio, so feeding it from
the start keeps the output's delay constant.

Pairing is by count, so the two streams must stay in step. Reply audio counts from when the
microphone starts; a late microphone catches up, the reply audio waiting for it up to a
second. Microphone audio lost on the way (aiortc skips missing frames) must be reported with
``near_end_lost``: AEC3 is then given silence in its place, paired with the reply audio
played meanwhile, and the output of that silence is cut. Unreported, every lost frame would
make the reference lag the echo by one more frame (measured: 5 % of 20 ms frames lost
unreported leave under 1 dB of the echo removed after 7 s; reported, ~40 dB even at 25 %).

AEC3 finds the echo's delay by itself, but only up to ~500 ms behind the reference
(measured: 40-500 ms cancelled, 550 ms and more not), and the figure WebRTC's
``set_stream_delay_ms`` takes made no measurable difference. So ``stream_delay_ms`` is
applied here instead, as a fixed delay on the reference: an echo path of
``stream_delay_ms`` to ``stream_delay_ms + 500`` ms is then cancelled. It must not exceed
the real delay: an echo that arrives before its reference cannot be cancelled.
"""

from __future__ import annotations

from collections import deque

import av
import numpy as np
from livekit.rtc import AudioFrame, AudioProcessingModule

from media import Float32Array, Int16Array
from media.audio import Resampler

# Rates the WebRTC module processes natively, each with the delay (samples) AEC3 adds to the
# microphone once it has a far end, measured with livekit 1.2.1 (band splitting, 4 ms blocks).
_AEC3_DELAY = {8_000: 88, 16_000: 128, 32_000: 260, 48_000: 430}
# Reply audio waits at most this long for the microphone audio it pairs with (jitter, a
# stall); past it the oldest is dropped, and AEC3 could not match an echo that late anyway.
# Also the most silence a gap in the microphone is stood in for by.
_MAX_WAIT_S = 1.0
_MAX_STREAM_DELAY_MS = 2_000
# How much echo-free speech warm_up plays to AEC3: its transparent mode engaged after 5-8 s.
WARM_UP_S = 8.0


class EchoCanceller:
    """One per audio session, kept across replies (it adapts to the room over seconds);
    not thread-safe: use it from one thread at a time.

    ``far_end`` takes the reply as it is sent (any rate, mono int16); ``near_end`` takes the
    microphone (mono float32 at ``sample_rate``) and returns as many samples as it is
    given: the microphone with the echo removed, delayed by a constant ``latency_samples``
    (288 at 16 kHz: 18 ms), silence before that. 10 ms of the delay is here, since audio is
    processed in whole frames and holding one frame back lets every call return its own
    length whatever the count; 8 ms is inside AEC3.

    Costs, measured on this project's 2-core machines: creating one ~1 ms (the first in a
    process ~10 ms: it starts livekit's native runtime, 5 threads); ~10 ms of CPU per
    second of microphone audio, ~20-40 ms per second while a reply plays (1-4 % of a core;
    livekit's calls release the GIL).
    """

    def __init__(self, *, sample_rate: int = 16_000, stream_delay_ms: int = 0) -> None:
        if sample_rate not in _AEC3_DELAY:
            raise ValueError(f"sample_rate must be one of {sorted(_AEC3_DELAY)}, not {sample_rate}")
        if not 0 <= stream_delay_ms <= _MAX_STREAM_DELAY_MS:
            raise ValueError(f"stream_delay_ms must be within 0..{_MAX_STREAM_DELAY_MS}")
        self.sample_rate = sample_rate
        self.stream_delay_ms = stream_delay_ms
        self._frame = sample_rate // 100
        self._aec3_delay = _AEC3_DELAY[sample_rate]
        self.latency_samples = self._frame + self._aec3_delay
        self._max_lost = round(_MAX_WAIT_S * sample_rate)
        self._silence = bytes(2 * self._frame)
        self._waiting: deque[bytes] = deque(maxlen=round(_MAX_WAIT_S * 100))
        self._delay_frames = stream_delay_ms // 10
        self._delay_line: deque[bytes] = deque()
        self._cuts: deque[tuple[int, int]] = deque()  # stand-ins for lost audio, [start, end)
        self.far_end_dropped = 0  # 10 ms far-end frames dropped because the microphone lagged
        self.reset()

    def reset(self) -> None:
        """Forget everything: the adapted echo path, buffered audio, the output's delay."""
        self._apm = AudioProcessingModule(
            echo_cancellation=True,
            noise_suppression=False,
            high_pass_filter=True,
            auto_gain_control=False,
        )
        # WebRTC asks for this with echo cancellation on; the delay is applied here instead.
        self._apm.set_stream_delay_ms(0)
        self._far_rate = 0
        self._far_resampler: Resampler | None = None
        self._far_pending: Int16Array = np.zeros(0, dtype=np.int16)
        self._waiting.clear()
        self._delay_line.clear()
        self._delay_line.extend([self._silence] * self._delay_frames)
        self._near_started = False
        self._near_pending: Float32Array = np.zeros(0, dtype=np.float32)
        self._pushed = 0  # samples into AEC3's capture side, stand-ins included
        self._processed = 0  # samples out of it
        self._cuts.clear()
        self._out: Float32Array = np.zeros(self._frame, dtype=np.float32)

    def warm_up(self, render: Int16Array, sample_rate: int, seconds: float = WARM_UP_S) -> None:
        """Let AEC3 hear ``render`` (speech, looped) with a silent microphone before the
        session starts. Fresh, AEC3 assumes the worst of an echo path it has not measured
        and suppresses the microphone while a reply plays; with no echo to measure (the
        browser cancelled it, or headphones) it stays so until its transparent mode
        engages, about 6 s into the first reply: a person talking over it in that time was
        cut by 20-30 dB (measured) and could not interrupt. Warmed up on echo-free speech,
        it passes that person through, and still cancels a real echo once it appears
        (measured: residual echo -25 dB within the first 0.5 s). Blocking (~25 ms of CPU
        per second warmed): run it before the canceller is shared with the event loop."""
        if render.ndim != 1 or not render.size:
            raise ValueError("warm-up audio must be mono and not empty")
        resampler = Resampler("s16", "mono", self.sample_rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(render, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = sample_rate
        parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        speech = np.concatenate(parts).astype(np.int16)
        frames = int(seconds * 100)
        looped = np.resize(speech, frames * self._frame)  # repeats the sentence
        for index in range(frames):
            far = looped[index * self._frame : (index + 1) * self._frame].tobytes()
            self._apm.process_reverse_stream(
                AudioFrame(bytearray(far), self.sample_rate, 1, self._frame)
            )
            self._apm.process_stream(
                AudioFrame(bytearray(self._silence), self.sample_rate, 1, self._frame)
            )

    def far_end(self, samples: Int16Array, sample_rate: int) -> None:
        """The reply audio at the pace it is sent (a whole reply given at once would be
        taken as played within the next second, and the rest dropped)."""
        if samples.ndim != 1:
            raise ValueError("far-end audio must be mono (one dimension)")
        if sample_rate != self._far_rate:
            # A new rate (a new track): a fresh resampler, whose filter state is per stream;
            # what was pending at the old rate cannot be joined to the new audio.
            self._far_rate = sample_rate
            self._far_resampler = None
            if sample_rate != self.sample_rate:
                self._far_resampler = Resampler("s16", "mono", self.sample_rate)
            self._far_pending = np.zeros(0, dtype=np.int16)
        data = self._resample(samples, sample_rate)
        if not self._near_started:
            return  # played before the microphone flows: nothing it could be paired with
        if self._far_pending.size:
            data = np.concatenate([self._far_pending, data])
        whole = len(data) // self._frame * self._frame
        for start in range(0, whole, self._frame):
            if len(self._waiting) == self._waiting.maxlen:
                self.far_end_dropped += 1
            self._waiting.append(data[start : start + self._frame].tobytes())
        self._far_pending = data[whole:].copy()

    def near_end(self, samples: Float32Array) -> Float32Array:
        """Microphone audio → the same number of samples, echo removed (see the class)."""
        if samples.ndim != 1:
            raise ValueError("near-end audio must be mono (one dimension)")
        self._push(samples)
        out = self._out
        self._out = out[len(samples) :].copy()
        return out[: len(samples)]

    def near_end_lost(self, samples: int) -> None:
        """``samples`` of microphone audio (at ``sample_rate``) never arrived: AEC3 gets as
        much silence in their place, paired with the reply audio played meanwhile, and what
        it makes of that silence is left out of the output."""
        if samples < 0:
            raise ValueError("samples lost must be >= 0")
        # Longer gaps would only pair silence with silence: the reply audio from before the
        # last second is gone already.
        samples = min(samples, self._max_lost)
        if samples:
            self._cuts.append((self._pushed, self._pushed + samples))
            self._push(np.zeros(samples, dtype=np.float32))

    def _push(self, samples: Float32Array) -> None:
        self._near_started = True
        self._pushed += len(samples)
        data = np.concatenate([self._near_pending, samples]) if self._near_pending.size else samples
        whole = len(data) // self._frame * self._frame
        parts = [self._out]
        for start in range(0, whole, self._frame):
            parts.append(self._uncut(self._process(data[start : start + self._frame])))
        self._near_pending = data[whole:].astype(np.float32, copy=True)
        self._out = np.concatenate(parts)

    def _process(self, near: Float32Array) -> Float32Array:
        # Silence when no reply audio waits keeps the two streams in step, so the echo's
        # delay stays the one AEC3 estimated.
        far = self._waiting.popleft() if self._waiting else self._silence
        if self._delay_frames:
            self._delay_line.append(far)
            far = self._delay_line.popleft()
        # bytearray: livekit processes frames in place and would copy bytes to one anyway.
        reverse = AudioFrame(bytearray(far), self.sample_rate, 1, self._frame)
        self._apm.process_reverse_stream(reverse)
        pcm = np.clip(np.rint(near * 32768.0), -32768, 32767).astype(np.int16)
        frame = AudioFrame(bytearray(pcm.tobytes()), self.sample_rate, 1, self._frame)
        self._apm.process_stream(frame)  # in place
        cleaned = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
        cleaned *= np.float32(1 / 32768)
        return cleaned

    def _uncut(self, cleaned: Float32Array) -> Float32Array:
        """``cleaned`` less the samples that came from stand-ins for lost audio, which come
        out of AEC3 ``_aec3_delay`` samples after they went in."""
        first = self._processed - self._aec3_delay  # where cleaned[0] went in
        self._processed += len(cleaned)
        if not self._cuts:
            return cleaned
        keep = np.ones(len(cleaned), dtype=bool)
        for start, end in self._cuts:
            keep[max(start - first, 0) : max(end - first, 0)] = False
        while self._cuts and self._cuts[0][1] <= first + len(cleaned):
            self._cuts.popleft()
        return cleaned[keep]

    def _resample(self, samples: Int16Array, rate: int) -> Int16Array:
        if self._far_resampler is None:
            return samples.astype(np.int16, copy=False)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = rate
        # Resample by content alone, as media.audio.MonoResampler does for the microphone.
        frame.pts = None
        out = [f.to_ndarray().reshape(-1) for f in self._far_resampler.resample(frame)]
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(out).astype(np.int16, copy=False)
