"""A real aiortc client for loopback tests and benchmarks: it plays audio as a browser plays
a microphone (Opus over DTLS-SRTP, paced in real time) and collects the data-channel events.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import random
import time
import wave
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import is_rtcp

from media import Float32Array

# The committed test speech lives with the tests (this module is shared with bench/).
DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
RATE = 48_000
FRAME = 960  # 20 ms, what browsers send


def read_wav(path: Path) -> Float32Array:
    """16-bit mono WAV → float32 at its own rate (the committed clips are 16 kHz)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit mono")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def load_clips() -> list[tuple[str, Float32Array]]:
    """(reference text, 16 kHz audio) for the committed speech clips."""
    meta = json.loads((DATA / "speech.json").read_text())
    return [(c["text"], read_wav(DATA / c["file"])) for c in meta["clips"]]


def upsample(audio_16k: Float32Array) -> Float32Array:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(audio_16k.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = 16_000
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def speech_start_offset(audio: Float32Array, rate: int, floor: float = 0.01) -> float | None:
    """Seconds from the start of ``audio`` to its first audible sample; None: all silent."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    return int(loud[0]) / rate if loud.size else None


def speech_end_offset(audio: Float32Array, rate: int, floor: float = 0.01) -> float:
    """Seconds from the start of ``audio`` to the end of its last audible sample."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    return (int(loud[-1]) + 1) / rate if loud.size else 0.0


class ReceivedAudio:
    """What the client hears on the gateway's audio track: 48 kHz mono float32 frames with
    their arrival times (``time.monotonic``), the last ``max_frames`` of them."""

    def __init__(self, max_frames: int = 6000) -> None:  # two minutes of 20 ms frames
        self.frames: deque[tuple[float, Float32Array]] = deque(maxlen=max_frames)
        self.listeners: list[Callable[[Float32Array], None]] = []

    def add(self, frame: av.AudioFrame) -> None:
        pcm = frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
        channels = frame.layout.nb_channels
        samples = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm
        self.frames.append((time.monotonic(), samples))
        for listener in self.listeners:
            listener(samples)

    def since(self, start: float) -> Float32Array:
        parts = [samples for at, samples in self.frames if at >= start]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def first_loud(self, after: float, floor: float = 0.01) -> float | None:
        """When the first frame louder than ``floor`` (peak) arrived after ``after``."""
        for at, samples in self.frames:
            if at >= after and samples.size and float(np.abs(samples).max()) > floor:
                return at
        return None

    def last_loud(self, floor: float = 0.01) -> float | None:
        for at, samples in reversed(self.frames):
            if samples.size and float(np.abs(samples).max()) > floor:
                return at
        return None


class EchoPath:
    """A loudspeaker heard by the microphone: what arrives is played back into the mic
    ``delay_ms`` later at ``gain_db``. Bounded to a few seconds of backlog."""

    def __init__(self, gain_db: float = -20.0, delay_ms: float = 40.0) -> None:
        self._gain = np.float32(10 ** (gain_db / 20))
        self._pending: deque[Float32Array] = deque(maxlen=500)
        self._pending.append(np.zeros(int(RATE * delay_ms / 1000), dtype=np.float32))
        self._head: Float32Array = np.zeros(0, dtype=np.float32)

    def heard(self, samples: Float32Array) -> None:
        self._pending.append(samples * self._gain)

    def take(self, count: int) -> Float32Array:
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        while filled < count:
            if not self._head.size:
                if not self._pending:
                    break
                self._head = self._pending.popleft()
            take = min(count - filled, self._head.size)
            out[filled : filled + take] = self._head[:take]
            self._head = self._head[take:]
            filled += take
        return out


class MicrophoneTrack(MediaStreamTrack):
    """Plays queued clips, then silence, in real time, like a microphone that never stops.

    ``speech_ends`` records, for each clip, the wall time (``time.monotonic``) at which its
    last audible sample left the client: "end of speech" as a client measures it.
    ``speech_onsets`` records, the same way, when each clip's first audible sample left:
    "start of speech". (Not ``speech_starts``: ``bench.voice.TimedMicrophone`` keeps a
    list of that name itself.)
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        # A clip at 48 kHz, where its speech ends and (-1: silent clip) where it starts.
        self._queue: deque[tuple[Float32Array, int, int]] = deque()
        self._current: Float32Array | None = None
        self._end_sample = 0
        self._start_sample = -1
        self._pos = 0
        self._start: float | None = None
        self._timestamp = 0
        self.speech_ends: list[float] = []
        self.speech_onsets: list[float] = []
        self.echo: EchoPath | None = None  # a loudspeaker this microphone hears

    def play(self, audio_16k: Float32Array) -> None:
        samples = upsample(audio_16k)
        start = speech_start_offset(samples, RATE)
        self._queue.append(
            (
                samples,
                int(speech_end_offset(samples, RATE) * RATE),
                -1 if start is None else round(start * RATE),
            )
        )

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME
            wait = self._start + self._timestamp / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        out = np.zeros(FRAME, dtype=np.float32)
        filled = 0
        while filled < FRAME:
            if self._current is None:
                if not self._queue:
                    break
                self._current, self._end_sample, self._start_sample = self._queue.popleft()
                self._pos = 0
            take = min(FRAME - filled, len(self._current) - self._pos)
            out[filled : filled + take] = self._current[self._pos : self._pos + take]
            if self._pos <= self._start_sample < self._pos + take:
                # This frame carries the start of speech, ~``filled`` in.
                early = (filled + self._start_sample - self._pos) / RATE
                self.speech_onsets.append(time.monotonic() + early)
            if self._pos < self._end_sample <= self._pos + take:
                # This frame carries the end of speech; it leaves now, ~``filled`` in.
                late = (filled + self._end_sample - self._pos) / RATE
                self.speech_ends.append(time.monotonic() + late)
            filled += take
            self._pos += take
            if self._pos >= len(self._current):
                self._current = None
        if self.echo is not None:
            out += self.echo.take(FRAME)
        pcm = (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class LossPattern:
    """Which outgoing RTP packets a lossy link drops: each one at random with probability
    ``rate``, or, with ``burst=(shortest, longest)``, runs of that many packets starting
    at random, so that about ``rate`` of all packets are lost. Seeded: the same pattern
    every run. ``sent`` and ``dropped`` count what it was asked about and what it dropped."""

    def __init__(self, rate: float, *, burst: tuple[int, int] | None = None, seed: int = 1) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.burst = burst
        self._random = random.Random(seed)
        self._left = 0  # packets still to drop in the current burst
        if burst is None:
            self._start = rate
        else:
            # A burst starts among the packets that get through: q * mean / (1 + q * mean)
            # of all packets are then lost, which is ``rate``.
            mean_length = (burst[0] + burst[1]) / 2
            self._start = rate / (mean_length * (1.0 - rate))
        self.sent = 0
        self.dropped = 0

    def drop(self) -> bool:
        self.sent += 1
        if self._left == 0 and self._random.random() < self._start:
            self._left = 1 if self.burst is None else self._random.randint(*self.burst)
        if self._left == 0:
            return False
        self._left -= 1
        self.dropped += 1
        return True


class BrowserOpusTrack(MediaStreamTrack):
    """``source``'s audio encoded as a browser sends a microphone: mono Opus at 32 kb/s,
    VoIP mode, in-band FEC on (as after an answer with ``useinbandfec=1``), tuned for
    ``packet_loss`` per cent of loss (browsers set it from the loss the receiver reports).
    aiortc sends the packets as they are (its own encoder: 96 kb/s CELT, no FEC)."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, packet_loss: int = 10) -> None:
        super().__init__()
        self._source = source
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.bit_rate = 32_000
        self._encoder.format = "s16"
        self._encoder.layout = "mono"
        self._encoder.sample_rate = RATE
        self._encoder.time_base = fractions.Fraction(1, RATE)
        self._encoder.options = {
            "application": "voip",
            "fec": "1",
            "packet_loss": str(max(0, min(100, packet_loss))),
        }
        self._pending: deque[av.Packet[Any]] = deque()

    async def recv(self) -> av.Packet[Any]:
        while not self._pending:
            if self.readyState != "live":
                raise MediaStreamError
            frame = await self._source.recv()
            if isinstance(frame, av.AudioFrame):
                self._pending.extend(self._encoder.encode(frame))
        return self._pending.popleft()

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class LoopbackClient:
    """One WebRTC client session: microphone track + the ``events`` data channel.

    ``loss`` drops outgoing RTP packets of the microphone (this kernel has no netem);
    ``browser_opus`` sends the microphone as a browser encodes it (:class:`BrowserOpusTrack`,
    with in-band FEC) instead of through aiortc's encoder."""

    def __init__(self, *, loss: LossPattern | None = None, browser_opus: bool = False) -> None:
        self.pc = RTCPeerConnection()
        self.mic = MicrophoneTrack()
        self.loss = loss
        if browser_opus:
            packet_loss = round(100 * loss.rate) if loss is not None else 0
            self._sender = self.pc.addTrack(BrowserOpusTrack(self.mic, packet_loss))
        else:
            self._sender = self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("events")
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.heard = ReceivedAudio()  # the gateway's spoken replies
        self._listening: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.network_blocked = False  # see :meth:`block_network`
        self.blocked_sent = 0
        self.blocked_received = 0
        self._gated: set[int] = set()  # ids of the aioice protocols already gated

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._listening is None:
            self._listening = asyncio.ensure_future(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self.heard.add(frame)

    def feed_back_echo(self, gain_db: float = -20.0, delay_ms: float = 40.0) -> None:
        """Let the microphone hear the reply, as a laptop's speaker would reach it."""
        echo = EchoPath(gain_db, delay_ms)
        self.heard.listeners.append(echo.heard)
        self.mic.echo = echo

    def _on_message(self, data: str | bytes) -> None:
        event = json.loads(data)
        self.received.append((time.monotonic(), event))
        self.events.put_nowait(event)

    async def offer(self) -> str:
        """The offer SDP, with every candidate gathered (aiortc does not trickle)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        if self.loss is not None:
            self._drop_outgoing(self.loss)

    def _drop_outgoing(self, loss: LossPattern) -> None:
        """Drop the microphone's RTP packets as ``loss`` says, after they are numbered (so
        the receiver sees the gaps) and before they are encrypted. Wraps this client's own
        DTLS transport (once bundled, the one every stream shares): RTCP, other streams
        and the data channel pass untouched."""
        transport = self._sender.transport
        ssrc = self._sender._ssrc
        send = transport._send_rtp

        async def send_rtp(data: bytes) -> None:
            if not is_rtcp(data) and int.from_bytes(data[8:12], "big") == ssrc and loss.drop():
                return
            await send(data)

        transport._send_rtp = send_rtp  # type: ignore[method-assign]

    def block_network(self) -> None:
        """The client's network path disappears: every UDP datagram of its ICE connection
        (STUN, DTLS, SRTP, SCTP), sent or received, is dropped until :meth:`unblock_network`.
        Nothing is closed: to the gateway, the client has simply gone silent.
        ``blocked_sent`` and ``blocked_received`` count what was dropped."""
        self._gate_udp()
        self.network_blocked = True

    def unblock_network(self) -> None:
        """The path comes back (the same sockets and addresses)."""
        self.network_blocked = False

    def _gate_udp(self) -> None:
        """Wraps, once each, the send and receive of every UDP socket (aioice protocol) of
        this client's ICE connections: once bundled, the one every stream and the data
        channel share."""
        transports = [t.sender.transport for t in self.pc.getTransceivers()]
        if self.pc.sctp is not None:
            transports.append(self.pc.sctp.transport)
        for dtls in transports:
            if dtls is None:
                continue
            for protocol in dtls.transport._connection._protocols:
                if id(protocol) not in self._gated:
                    self._gated.add(id(protocol))
                    self._gate(protocol)

    def _gate(self, protocol: Any) -> None:
        send_data = protocol.send_data
        send_stun = protocol.send_stun
        datagram_received = protocol.datagram_received

        async def gated_send_data(data: bytes, addr: tuple[str, int]) -> None:
            if self.network_blocked:
                self.blocked_sent += 1
                return
            await send_data(data, addr)

        def gated_send_stun(message: Any, addr: tuple[str, int]) -> None:
            if self.network_blocked:
                self.blocked_sent += 1
                return
            send_stun(message, addr)

        def gated_datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
            if self.network_blocked:
                self.blocked_received += 1
                return
            datagram_received(data, addr)

        protocol.send_data = gated_send_data
        protocol.send_stun = gated_send_stun
        protocol.datagram_received = gated_datagram_received

    async def next_event(self, *types: str, within: float = 20.0) -> dict[str, Any]:
        """The next event of one of ``types`` within ``within`` seconds (others are skipped),
        or TimeoutError."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            event = await asyncio.wait_for(self.events.get(), max(left, 0.0))
            if not types or event["type"] in types:
                return event

    async def collect(self, seconds: float) -> list[dict[str, Any]]:
        """Every event that arrives within ``seconds``."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await asyncio.wait_for(self.events.get(), left))
            except TimeoutError:
                break
        return out

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
