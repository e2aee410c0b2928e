"""Spoken replies, heard by a real WebRTC client: voice to voice, continuity, barge-in, TTS.

The real gateway app is served on 127.0.0.1 with a preloaded tiny.en (openai-whisper) and
the Piper voice, and points at the test Ollama (``gateway.testing.ollama_server``): 200 ms to
the first token (``--first-token-ms``), then a word every 25 ms, always the same five-sentence
``REPLY`` (its first piece to speak is the clause "Paris has many fine museums,", 5 words).
Clients are ``gateway.testing.loopback.LoopbackClient``s whose microphone also records when
each clip's first audible sample left (``TimedMicrophone``); it hears no echo, so each offer
says ``"session": {"echo_cancellation": true}`` as a browser whose microphone cancels echo
does, and the gateway's canceller starts warm. "Audible" is a 20 ms frame peaking above
0.01, what ``ReceivedAudio`` calls loud. Everything shares one event loop, as in the
loopback tests; the machine's load is in the JSON.

1. Voice to voice: the client plays the transcript benchmark's held-out sentences; per turn,
   end of speech → first ``reply.delta``, → ``reply.audio.started`` (sent when the first
   frame of the voice leaves the gateway) and → the first audible frame received. Target:
   first audible frame ≤ 300 ms after the first delta. Each reply is cancelled once heard.
   Baseline in the same run: a bare aiortc answerer puts the same first piece on a
   ``ReplyAudioTrack`` at t and the same client notes its first audible frame: the cost of
   the 20 ms frame tick, Opus, loopback and aiortc's receive jitter buffer (prefetch of 4
   frames), with no gateway in the way.
2. Continuity: one client asks a typed question alone, then 4 clients ask at the same
   moment, and each hears the whole reply. The voice here is Piper with VITS's sampling
   noise off (``SteadyPiper``, the same work per sentence), so that each piece is the same
   audio in every session and in an offline reference synthesised beforehand. Method, per
   client:
   - A listener plays each received frame when it has arrived and the previous one has
     finished (no buffer of its own beyond aiortc's; its delay only grows). A frame that
     arrives after that is a hole of its lateness (a "late frame").
   - Pieces are found in the received samples in order: the first audible sample after the
     previous piece's end, less the reference's own lead-in, gives where the piece began;
     its length is known from the reference. A piece whose 10 ms envelope correlates under
     0.8 with the reference's is reported as misaligned.
   - A gap inside a sentence is (a) a late frame over 40 ms between a piece's first and last
     audible samples, or (b) at a piece boundary that is not a sentence end (the first
     clause → the rest of its sentence), silence beyond the reference's own (its trailing
     silence plus the next piece's lead-in) over 40 ms, late frames there included. The
     same excess at sentence ends is the added pause between sentences, reported apart.
   Silence the gateway inserts inside one piece (between Piper chunks of a multi-sentence
   piece) would misalign the pieces after it; the gateway counts it as
   ``gateway_audio_underruns_total``, read from ``/metrics`` around each run. aiortc's
   receive buffer releases a frame only when a later packet arrives, so it absorbs no
   stall; how many late frames exceed 80 ms (what a player holding 80 ms would still hear)
   is reported too. A 10 ms sleep on the shared loop is timed throughout: a late frame that
   arrived as the loop woke ≥ 20 ms late is this machine's CPU (sender, client or both
   held up), not the network or the gateway's pacing.
3. Barge-in: while the long reply is being spoken (and audible), the client plays a
   held-out sentence; from the microphone's first audible sample to the last audible frame
   of the reply received (before the next reply starts), ≥ 8 trials, with the default
   ``--barge-in-min-ms`` (300) and ``--barge-in-low-ms`` (160), and at 300 with the
   canceller cold (``echo_cancellation`` false in the offer). Target: p95 ≤ 250 ms. A clip
   that began in a pause and was never followed by reply audio counts 0 ms (reported); one
   that did not interrupt counts until the reply's voice ended.
4. The TTS engine alone: per held-out sentence, the first chunk's time and the real-time
   factor, Piper in process and the openai engine against
   ``gateway.testing.speech_server`` serving the same Piper voice (interleaved); and Piper
   alone on the reply's first piece, to set against the gateway's ``tts_first_audio_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientSession, ClientTimeout, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from piper import SynthesisConfig
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Benchmark, Recording, fmt, markdown_table, mean, percentile, write_json
from bench.e2e import FIRST_TOKEN_MS as E2E_FIRST_TOKEN_MS
from bench.e2e import add_first_token_argument
from bench.transcript import (
    CONNECT_TIMEOUT_S,
    POLL_S,
    BenchError,
    Sentence,
    add_vad_silence_argument,
    bounded,
    end_session,
    prepare_sentences,
    received_at,
)
from gateway.http.app import build_app
from gateway.ops.config import AsrEngineName, Config
from gateway.testing.loopback import RATE, LoopbackClient, MicrophoneTrack, ReceivedAudio
from gateway.testing.ollama_server import FakeOllama, fake_ollama, split_pieces
from gateway.testing.speech_server import speech_server
from media import Float32Array, Int16Array
from media.asr.base import ASREngine
from media.asr.engines import default_cache_dir, load_engine
from media.playout import ReplyAudioTrack
from media.tts.base import TTSEngine
from media.tts.openai import OpenAISpeechEngine
from media.tts.piper import PiperEngine
from media.tts.speakable import SpeechSplitter

logger = logging.getLogger(__name__)

ASR: AsrEngineName = "openai-whisper"
MODEL = "tiny.en"
DEVICE = "cpu"
FIRST_TOKEN_MS = E2E_FIRST_TOKEN_MS  # the same test Ollama as the e2e benchmark
TOKEN_INTERVAL_S = 0.025
QUESTION = "Tell me about the museums in Paris."
REPLY = (
    "Paris has many fine museums, and the Louvre is the largest of them. "
    "The Orsay museum holds impressionist paintings in an old railway station. "
    "The Pompidou centre shows modern art behind its colourful pipes and escalators. "
    "Smaller museums are often quieter, and some of them are free on the first Sunday "
    "of the month. "
    "If you only have one day, pick two museums and leave time for a walk along the river."
)
VOICE_TARGET_MS = 300.0  # first delta → first audible reply frame
GAP_LIMIT_MS = 40.0  # no gap over this inside a sentence
BARGE_IN_TARGET_MS = 250.0  # p95, first audible mic sample → last audible reply frame
BARGE_IN_LOW_MS = 160
CONCURRENT = 4  # the gateway's default --sessions-per-client
BASELINE_TRIALS, QUICK_BASELINE_TRIALS = 30, 10
BARGE_IN_TRIALS, QUICK_BARGE_IN_TRIALS = 20, 8

FLOOR = 0.01  # a frame peaking above this is audible (ReceivedAudio's own floor)
ENVELOPE = RATE // 100  # 10 ms windows, for checking a piece's alignment
ALIGNED = 0.8  # envelope correlation below this: the piece was not found where expected
STEADY = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

TURN_TIMEOUT_S = 20.0  # end of speech → the reply's first audio, beyond this a miss
PLAYBACK_SLACK_S = 5.0  # how late the microphone may run behind real time
FIRST_AUDIO_TIMEOUT_S = 3.0  # reply.audio.started → its first frame at the client
STOP_TIMEOUT_S = 5.0
GAP_S = 0.3  # quiet between turns, as a person pauses
REPLY_TIMEOUT_S = 20.0
LOUD_WAIT_S = 2.0  # for the voice to be audible before a barge-in starts
POLL_AUDIO_S = 0.01  # arrival times come from the frames themselves: this only wakes us
LOOP_TICK_S = 0.01
LOOP_STALL_MS = 20.0  # a wake this late counts as a stall when attributing late frames
FIRST_PIECE_REPEATS = 5


# --- the client: a timed microphone and an ear for the reply track ---


class TimedMicrophone(MicrophoneTrack):
    """Also records when each clip's first audible sample left the client (one clip at a
    time): when a person starts speaking, as ``speech_ends`` records when they stop."""

    def __init__(self) -> None:
        super().__init__()
        self.speech_starts: list[float] = []
        self._armed = False

    def play(self, audio_16k: Float32Array) -> None:
        super().play(audio_16k)
        self._armed = True

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        if self._armed:
            pcm = np.abs(frame.to_ndarray().reshape(-1).astype(np.int32))
            loud = np.flatnonzero(pcm > FLOOR * 32767)
            if loud.size:  # the frame leaves now; its sample i i/RATE later
                self.speech_starts.append(time.monotonic() + int(loud[0]) / RATE)
                self._armed = False
        return frame


class Ear:
    """Arrival time and peak of every frame of the reply track, for quick look-ups
    (``ReceivedAudio.first_loud`` scans whole frames each call)."""

    def __init__(self, heard: ReceivedAudio) -> None:
        self._heard = heard
        self.times: list[float] = []
        self.peaks: list[float] = []
        heard.listeners.append(self._on_frame)

    def _on_frame(self, samples: Float32Array) -> None:
        self.times.append(self._heard.frames[-1][0])  # appended just before listeners run
        self.peaks.append(float(np.abs(samples).max()) if samples.size else 0.0)

    def first_loud(self, after: float) -> float | None:
        for i in range(bisect.bisect_left(self.times, after), len(self.times)):
            if self.peaks[i] > FLOOR:
                return self.times[i]
        return None

    def last_loud(self, after: float, before: float) -> float | None:
        for i in range(bisect.bisect_right(self.times, before) - 1, -1, -1):
            if self.times[i] < after:
                break
            if self.peaks[i] > FLOOR:
                return self.times[i]
        return None

    def loud_now(self, frames: int = 3) -> bool:
        return len(self.peaks) >= frames and min(self.peaks[-frames:]) > FLOOR


@dataclass
class Peer:
    client: LoopbackClient
    mic: TimedMicrophone
    ear: Ear


def new_client() -> Peer:
    client = LoopbackClient()
    mic = TimedMicrophone()
    # Before the offer: aiortc's sender reads whichever track it holds once media starts.
    sender = next(s for s in client.pc.getSenders() if s.track is client.mic)
    sender.replaceTrack(mic)
    client.mic.stop()
    client.mic = mic
    return Peer(client, mic, Ear(client.heard))


async def connect(http: ClientSession, client: LoopbackClient, echo_cancelled: bool) -> str:
    """As ``bench.transcript.connect``, saying whether the microphone cancels echo itself
    (a browser's does by default; this one hears no echo at all): the gateway's own
    canceller then starts warm instead of suppressing the person at first."""
    sdp = await asyncio.wait_for(client.offer(), CONNECT_TIMEOUT_S)
    offer = {"sdp": sdp, "type": "offer", "session": {"echo_cancellation": echo_cancelled}}
    async with http.post("/offer", json=offer) as response:
        if response.status != 200:
            raise BenchError(f"POST /offer: {response.status} {await response.text()}")
        answer: dict[str, Any] = await response.json()
    await client.accept(answer)
    await client.next_event("session.ready", within=CONNECT_TIMEOUT_S)
    return str(answer["session_id"])


@contextlib.asynccontextmanager
async def session(http: ClientSession, echo_cancelled: bool = True) -> AsyncIterator[Peer]:
    peer = new_client()
    session_id: str | None = None
    try:
        session_id = await asyncio.wait_for(
            connect(http, peer.client, echo_cancelled), 2 * CONNECT_TIMEOUT_S
        )
        yield peer
    finally:
        if session_id is not None:
            await bounded("DELETE /sessions", end_session(http, session_id))
        await bounded("closing the client", peer.client.close())


@contextlib.asynccontextmanager
async def gateway(config: Config, asr: ASREngine, tts: TTSEngine) -> AsyncIterator[ClientSession]:
    runner = web.AppRunner(build_app(config, engine=asr, tts=tts))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        timeout = ClientTimeout(total=CONNECT_TIMEOUT_S)
        async with ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
            yield http
    finally:
        await bounded("closing the gateway", runner.cleanup())


def drain(peer: Peer) -> None:
    while not peer.client.events.empty():
        peer.client.events.get_nowait()


def send(peer: Peer, message: dict[str, Any]) -> None:
    peer.client.channel.send(json.dumps(message))


async def next_event(peer: Peer, *types: str, within: float) -> tuple[float, dict[str, Any]] | None:
    try:
        event = await peer.client.next_event(*types, within=within)
    except TimeoutError:
        return None
    return received_at(peer.client, event), event


async def poll(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_AUDIO_S)
    return True


async def first_heard(ear: Ear, after: float) -> float | None:
    """When the first audible frame after ``after`` arrived, waiting a while for it."""
    await poll(lambda: ear.first_loud(after) is not None, FIRST_AUDIO_TIMEOUT_S)
    return ear.first_loud(after)


async def stop_reply(peer: Peer) -> None:
    """Cancel the reply being spoken and wait for its voice to stop, then a pause."""
    send(peer, {"type": "cancel"})
    await next_event(peer, "reply.audio.done", within=STOP_TIMEOUT_S)
    await asyncio.sleep(GAP_S)


async def counters(http: ClientSession, name: str, label: str = "") -> dict[str, float]:
    """A Prometheus counter's totals from the gateway's ``/metrics``, by ``label``'s value
    (all under "" without one)."""
    async with http.get("/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples if family.name == name else ():
            if sample.name == f"{name}_total":
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out


async def counter(http: ClientSession, name: str) -> float:
    return sum((await counters(http, name)).values())


@contextlib.asynccontextmanager
async def watch_loop() -> AsyncIterator[list[tuple[float, float]]]:
    """When (``time.monotonic``) and how late (ms) this event loop woke a 10 ms sleep.
    Clients, gateway sessions and test servers all share it: a late frame while the loop
    was late is this machine's CPU, not the network."""
    lags: list[tuple[float, float]] = []

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_TICK_S)
            lags.append((time.monotonic(), 1000 * (loop.time() - before - LOOP_TICK_S)))

    task = asyncio.ensure_future(watch())
    try:
        yield lags
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def gateway_config(ollama_url: str, vad_silence_ms: int, barge_in_min_ms: int = 300) -> Config:
    return Config(
        admission="off",
        no_tls=True,
        asr_engine=ASR,
        vad_silence_ms=vad_silence_ms,
        ollama_host=ollama_url,
        tts_engine="piper",
        barge_in_min_ms=barge_in_min_ms,
    )


# --- voices ---


class SteadyPiper(PiperEngine):
    """The gateway's Piper engine with VITS's sampling noise off (as
    ``scripts.make_test_speech`` does): a piece is then the same audio in every session and
    in the offline reference. The work per sentence is unchanged."""

    def _sentences(self, text: str) -> Iterator[Int16Array]:
        for chunk in self._voice.synthesize(text, syn_config=STEADY):
            yield chunk.audio_int16_array


def speech_pieces(reply: str) -> list[str]:
    """What the gateway speaks, piece by piece, for ``reply`` streamed as the test Ollama
    streams it."""
    splitter = SpeechSplitter()
    pieces = [piece for delta in split_pieces(reply) for piece in splitter.push(delta)]
    return pieces + splitter.flush()


def to_48k(pcm: Int16Array, rate: int) -> Float32Array:
    """As the reply track resamples (libswresample, delay-compensated, drained)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    if not frames:
        return np.zeros(0, dtype=np.float32)
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
    return (out / 32768.0).astype(np.float32)


def envelope(audio: Float32Array) -> Float32Array:
    windows = len(audio) // ENVELOPE
    blocks = audio[: windows * ENVELOPE].reshape(windows, ENVELOPE)
    out: Float32Array = np.sqrt(np.mean(blocks**2, axis=1)).astype(np.float32)
    return out


@dataclass(frozen=True)
class IdealPiece:
    """One piece as the gateway puts it on the track (48 kHz), from the offline reference."""

    text: str
    chunks: int  # Piper chunks (one per sentence it finds)
    length: int
    first_loud: int
    last_loud: int
    envelope: Float32Array

    @property
    def ends_sentence(self) -> bool:
        return self.text.rstrip().endswith((".", "!", "?", "…"))

    @classmethod
    def of(cls, text: str, audio: Float32Array, chunks: int = 1) -> IdealPiece:
        loud = np.flatnonzero(np.abs(audio) > FLOOR)
        if not loud.size:
            raise ValueError(f"the piece {text!r} is silent")
        return cls(text, chunks, len(audio), int(loud[0]), int(loud[-1]), envelope(audio))


def ideal_pieces(engine: TTSEngine, reply: str) -> list[IdealPiece]:
    out = []
    for text in speech_pieces(reply):
        chunks = list(engine.synthesize(text))
        out.append(
            IdealPiece.of(text, to_48k(np.concatenate(chunks), engine.sample_rate), len(chunks))
        )
    return out


# --- 1. voice to voice ---


async def jitter_baseline(piece: Int16Array, rate: int, trials: int) -> list[float]:
    """A bare aiortc answerer puts ``piece`` on a ReplyAudioTrack at t (as the gateway would
    on the first delta, were speech instant); the client's first audible frame - t, in ms."""
    peer = new_client()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = ReplyAudioTrack()
    sink = MediaBlackhole()
    pc.on("track", sink.addTrack)  # the client's microphone, read and dropped
    out: list[float] = []
    try:
        await pc.setRemoteDescription(RTCSessionDescription(await peer.client.offer(), "offer"))
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())
        await peer.client.accept({"sdp": pc.localDescription.sdp, "type": "answer"})
        await sink.start()
        # Silence flows first, as in a session open for a while: aiortc's buffer is primed.
        if not await poll(lambda: len(peer.ear.times) >= 25, CONNECT_TIMEOUT_S):
            raise RuntimeError("the baseline peer sent no audio")
        for i in range(trials):
            await asyncio.sleep(0.2 + 0.007 * i)  # vary the phase against the 20 ms tick
            put_at = time.monotonic()
            await track.put(piece, rate)
            heard = await first_heard(peer.ear, put_at)
            if heard is not None:
                out.append(1000 * (heard - put_at))
            track.flush()
            await asyncio.sleep(GAP_S)  # the flushed voice's last frames arrive
    finally:
        await bounded("closing the baseline client", peer.client.close())
        await bounded("closing the baseline peer", sink.stop())
        await bounded("closing the baseline peer", pc.close())
    return out


@dataclass
class VoiceTurn:
    """One spoken question; times in ms from the client's end of speech."""

    text: str = ""
    finals: int = 0
    first_delta_ms: float | None = None
    audio_started_ms: float | None = None  # reply.audio.started received
    first_audio_ms: float | None = None  # the first audible frame received
    tts_first_audio_ms: float | None = None  # the gateway's own, from reply.audio.started
    errors: list[str] = field(default_factory=list)

    def between(self, start: str, end: str) -> float | None:
        a, b = getattr(self, start), getattr(self, end)
        return None if a is None or b is None else float(b - a)


async def voice_turn(peer: Peer, sentence: Sentence) -> VoiceTurn:
    drain(peer)
    mic = peer.mic
    ends_before = len(mic.speech_ends)
    mic.play(sentence.audio)
    deadline = time.monotonic() + sentence.duration_s + PLAYBACK_SLACK_S
    turn = VoiceTurn()
    speech_end: float | None = None
    reply_id: str | None = None
    first_delta: float | None = None
    started: tuple[float, dict[str, Any]] | None = None
    while True:
        if speech_end is None and len(mic.speech_ends) > ends_before:
            speech_end = mic.speech_ends[ends_before]
            deadline = speech_end + TURN_TIMEOUT_S
        if speech_end is not None and started is not None and mic.idle:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            turn.errors.append("timed out")
            break
        try:
            event = await asyncio.wait_for(peer.client.events.get(), min(POLL_S, left))
        except TimeoutError:
            continue
        at, kind = received_at(peer.client, event), event.get("type")
        if kind == "transcript.final":
            turn.finals += 1
            turn.text = str(event["text"])
        elif kind == "reply.started":  # a later one (the VAD split the sentence) wins
            reply_id, first_delta, started = str(event["reply_id"]), None, None
        elif kind == "reply.delta" and event.get("reply_id") == reply_id:
            first_delta = first_delta or at
        elif kind == "reply.audio.started" and event.get("reply_id") == reply_id:
            started = (at, event)
        elif kind == "error":
            turn.errors.append(f"{event.get('code')}: {event.get('message')}")
    if speech_end is None:
        turn.errors.append("the microphone did not play the sentence in time")
        return turn
    if first_delta is not None:
        turn.first_delta_ms = 1000 * (first_delta - speech_end)
    if started is not None:
        turn.audio_started_ms = 1000 * (started[0] - speech_end)
        tts_ms = started[1].get("timings", {}).get("tts_first_audio_ms")
        turn.tts_first_audio_ms = None if tts_ms is None else float(tts_ms)
        after = first_delta if first_delta is not None else speech_end
        heard = await first_heard(peer.ear, after)
        if heard is not None:
            turn.first_audio_ms = 1000 * (heard - speech_end)
        else:
            turn.errors.append("reply.audio.started, but no audible frame arrived")
    await stop_reply(peer)
    return turn


async def voice_to_voice(
    http: ClientSession, warmup: Sentence, sentences: Sequence[Sentence]
) -> list[VoiceTurn]:
    turns = []
    async with session(http) as peer:
        await voice_turn(peer, warmup)  # one-off costs: ONNX, Opus, SCTP, HTTP pool
        for i, sentence in enumerate(sentences, 1):
            turn = await voice_turn(peer, sentence)
            turns.append(turn)
            print(
                f"  {i}/{len(sentences)}: first delta {fmt(turn.first_delta_ms)} ms, first "
                f"audio {fmt(turn.first_audio_ms)} ms after end of speech"
                + (f" ({'; '.join(turn.errors)})" if turn.errors else ""),
                flush=True,
            )
    return turns


# --- 2. continuity ---


@dataclass(frozen=True)
class Gap:
    piece: int  # the piece it is in, or the boundary after it (0-based)
    kind: str  # "late frame" inside a piece, or "boundary": the rest of a sentence late
    ms: float


@dataclass
class Listening:
    """What one client heard of one whole reply."""

    pieces: int = 0  # found in the received audio
    misaligned: int = 0
    spoken_s: float = 0.0  # first to last audible sample
    first_audio_ms: float | None = None  # the question → the first audible frame
    gaps: list[Gap] = field(default_factory=list)  # inside a sentence, over the limit
    late_frames: int = 0  # over the limit, anywhere in the spoken span
    longest_late_ms: float = 0.0
    late_at: list[tuple[float, float]] = field(default_factory=list)  # (arrival, ms) of those
    late_in_loop_stall: int = 0  # of those, how many arrived as the shared loop woke late
    late_over_80ms: int = 0  # what a player holding aiortc's 80 ms would still hear
    sentence_pauses_ms: list[float] = field(default_factory=list)  # added at sentence ends
    clause_pauses_ms: list[float] = field(default_factory=list)  # added inside a sentence
    frames: int = 0

    @property
    def longest_gap_ms(self) -> float:
        return max((g.ms for g in self.gaps), default=0.0)


def listen(
    frames: Sequence[tuple[float, Float32Array]],
    pieces: Sequence[IdealPiece],
    asked: float,
    limit_ms: float = GAP_LIMIT_MS,
) -> Listening:
    """Gaps in what a client heard, against the reference pieces (method: module doc)."""
    out = Listening(frames=len(frames))
    if not frames:
        return out
    times = np.array([at for at, _ in frames])
    lengths = np.array([len(samples) for _, samples in frames])
    offsets = np.cumsum(lengths) - lengths  # each frame's first sample
    audio = np.concatenate([samples for _, samples in frames])
    # The listener: frame k plays at max(arrival, previous end); the excess is a hole.
    late = np.zeros(len(frames))
    playing = times[0]
    for k in range(1, len(frames)):
        due = playing + lengths[k - 1] / RATE
        late[k] = max(0.0, times[k] - due)
        playing = max(times[k], due)
    loud = np.flatnonzero(np.abs(audio) > FLOOR)
    if not loud.size:
        return out
    out.spoken_s = (loud[-1] - loud[0]) / RATE
    first_frame = int(np.searchsorted(offsets, loud[0], side="right")) - 1
    out.first_audio_ms = 1000 * (times[first_frame] - asked)
    spoken = (offsets > loud[0]) & (offsets <= loud[-1])
    out.late_at = [
        (float(times[k]), float(1000 * late[k]))
        for k in np.flatnonzero(spoken & (late * 1000 > limit_ms))
    ]
    out.late_frames = len(out.late_at)
    out.late_over_80ms = sum(1 for _, ms in out.late_at if ms > 80)
    out.longest_late_ms = float(1000 * late[spoken].max(initial=0.0))

    def late_ms(after: int, upto: int) -> list[float]:
        return [float(1000 * v) for v in late[(offsets > after) & (offsets <= upto)]]

    spans: list[tuple[int, int]] = []  # each piece's first and last audible sample
    position = 0
    for i, piece in enumerate(pieces):
        found = int(np.searchsorted(loud, position))
        if found == len(loud):
            break
        first = int(loud[found])
        start = first - piece.first_loud
        end = start + piece.last_loud
        received = envelope(audio[max(start, 0) : start + piece.length])
        n = min(len(received), len(piece.envelope))
        if n < 2 or np.corrcoef(received[:n], piece.envelope[:n])[0, 1] < ALIGNED:
            out.misaligned += 1
        spans.append((first, end))
        out.gaps += [Gap(i, "late frame", ms) for ms in late_ms(first, end) if ms > limit_ms]
        position = max(start + piece.length, first + 1)
    out.pieces = len(spans)
    for i in range(len(spans) - 1):
        piece, following = pieces[i], pieces[i + 1]
        silence = spans[i + 1][0] - spans[i][1]
        own = (piece.length - piece.last_loud) + following.first_loud
        added = 1000 * (silence - own) / RATE + sum(late_ms(spans[i][1], spans[i + 1][0]))
        if piece.ends_sentence:
            out.sentence_pauses_ms.append(added)
        else:
            out.clause_pauses_ms.append(added)
            if added > limit_ms:
                out.gaps.append(Gap(i, "boundary", added))
    return out


@dataclass
class ContinuityRun:
    listeners: int
    heard: list[Listening] = field(default_factory=list)
    underruns: float | None = None  # the gateway's mid-piece underruns during the run
    finished: int = 0  # clients whose reply.audio.done arrived
    loop_lag_max_ms: float = 0.0
    loop_lags_over_limit: int = 0
    cpu_cores: float = 0.0  # this process's CPU time / wall time


async def hear_whole_reply(
    http: ClientSession, peers: Sequence[Peer], pieces: Sequence[IdealPiece]
) -> ContinuityRun:
    run = ContinuityRun(len(peers))
    for peer in peers:
        drain(peer)
    before = await counter(http, "gateway_audio_underruns")
    asked = time.monotonic()
    for peer in peers:  # in one step of the loop: the same moment for the gateway
        send(peer, {"type": "text", "text": QUESTION})
    speech_s = sum(p.length for p in pieces) / RATE
    within = REPLY_TIMEOUT_S + 2 * speech_s
    cpu = time.process_time()
    async with watch_loop() as lags:
        done = await asyncio.gather(
            *(next_event(peer, "reply.audio.done", within=within) for peer in peers)
        )
    run.cpu_cores = (time.process_time() - cpu) / max(time.monotonic() - asked, 1e-9)
    run.loop_lag_max_ms = max((lag for _, lag in lags), default=0.0)
    run.loop_lags_over_limit = sum(1 for _, lag in lags if lag > GAP_LIMIT_MS)
    stalls = [(at, lag) for at, lag in lags if lag >= LOOP_STALL_MS]
    run.finished = sum(1 for d in done if d is not None)
    await asyncio.sleep(GAP_S)  # the last frames are on their way
    run.underruns = await counter(http, "gateway_audio_underruns") - before
    for peer in peers:
        frames = [(at, samples) for at, samples in peer.client.heard.frames if at >= asked]
        heard = listen(frames, pieces, asked)
        heard.late_in_loop_stall = sum(1 for at, ms in heard.late_at if in_stall(at, ms, stalls))
        run.heard.append(heard)
    return run


def in_stall(arrival: float, late_ms: float, stalls: Sequence[tuple[float, float]]) -> bool:
    """Whether the loop woke late between the frame's due time and just after it arrived:
    the same stall held up the sender, or the client, or both."""
    slack = LOOP_STALL_MS / 1000
    return any(arrival - late_ms / 1000 - slack <= at <= arrival + slack for at, _ in stalls)


async def continuity(
    http: ClientSession, pieces: Sequence[IdealPiece], concurrent: int
) -> list[ContinuityRun]:
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(session(http))
        send(first, {"type": "text", "text": QUESTION})  # warm-up: the first voice's set-up
        await next_event(first, "reply.audio.started", within=REPLY_TIMEOUT_S)
        await stop_reply(first)
        print("  one client alone…", flush=True)
        alone = await hear_whole_reply(http, [first], pieces)
        peers = [first]
        for _ in range(concurrent - 1):
            peers.append(await stack.enter_async_context(session(http)))
        print(f"  {concurrent} clients at once…", flush=True)
        together = await hear_whole_reply(http, peers, pieces)
    return [alone, together]


# --- 3. barge-in ---


@dataclass
class BargeIn:
    barge_in_min_ms: int
    warm: bool  # the session said its microphone cancels echo: the canceller starts warm
    offset_s: float  # after reply.audio.started
    silent_ms: float | None = None  # first audible mic sample → last audible reply frame
    in_pause: bool = False  # no reply audio after the clip began: it began in a pause
    speech_started_ms: float | None = None  # → speech.started at the client
    interrupted: bool | None = None  # reply.audio.done's flag
    errors: list[str] = field(default_factory=list)


async def barge_in_trial(peer: Peer, clip: Sentence, trial: BargeIn) -> None:
    drain(peer)
    send(peer, {"type": "text", "text": QUESTION})
    started = await next_event(peer, "reply.audio.started", within=REPLY_TIMEOUT_S)
    if started is None:
        trial.errors.append("no reply.audio.started")
        return
    await asyncio.sleep(trial.offset_s)
    # Speak over the voice, not into a pause between its sentences.
    if not await poll(peer.ear.loud_now, LOUD_WAIT_S):
        trial.errors.append("the voice was not audible before the clip")
    starts_before = len(peer.mic.speech_starts)
    peer.mic.play(clip.audio)
    deadline = time.monotonic() + clip.duration_s + TURN_TIMEOUT_S
    speech_start: float | None = None
    heard_speech: float | None = None
    next_reply: float | None = None
    while next_reply is None and time.monotonic() < deadline:
        if speech_start is None and len(peer.mic.speech_starts) > starts_before:
            speech_start = peer.mic.speech_starts[starts_before]
        try:
            event = await asyncio.wait_for(peer.client.events.get(), POLL_S)
        except TimeoutError:
            continue
        at, kind = received_at(peer.client, event), event.get("type")
        if kind == "speech.started" and heard_speech is None:
            heard_speech = at
        elif kind == "reply.audio.done" and trial.interrupted is None:
            trial.interrupted = bool(event.get("interrupted"))
        elif kind == "reply.started" and heard_speech is not None:
            next_reply = at  # the answer to the clip: its voice must not count
    end = next_reply if next_reply is not None else time.monotonic()
    send(peer, {"type": "cancel"})
    await next_event(peer, "reply.cancelled", within=STOP_TIMEOUT_S)
    if speech_start is None:
        trial.errors.append("the microphone did not play the clip in time")
        return
    if next_reply is None:
        trial.errors.append("no reply to the clip")
    if heard_speech is not None:
        trial.speech_started_ms = 1000 * (heard_speech - speech_start)
    last = peer.ear.last_loud(started[0], end)
    if last is None:
        trial.errors.append("no audible reply frame")
        return
    trial.in_pause = last < speech_start
    trial.silent_ms = max(0.0, 1000 * (last - speech_start))
    await asyncio.sleep(GAP_S)


async def barge_ins(
    ollama_url: str,
    args: argparse.Namespace,
    asr: ASREngine,
    tts: TTSEngine,
    clips: Sequence[Sentence],
    trials: int,
    results: Results,
) -> None:
    default = Config().barge_in_min_ms
    for min_ms, warm in ((default, True), (args.barge_in_low_ms, True), (default, False)):
        label = barge_in_label(min_ms, warm)
        print(f"  --barge-in-min-ms {label}: {trials} trials…", flush=True)
        config = gateway_config(ollama_url, args.vad_silence_ms, min_ms)
        async with gateway(config, asr, tts) as http, session(http, warm) as peer:
            for i in range(trials):
                trial = BargeIn(min_ms, warm, offset_s=0.6 + 0.25 * (i % 4))
                await barge_in_trial(peer, clips[i % len(clips)], trial)
                results.barge_ins.append(trial)
            # Speech while it spoke that was long enough to interrupt, or was not.
            outcomes = await counters(http, "gateway_barge_ins", "outcome")
            results.barge_in_outcomes[label] = outcomes


def barge_in_label(min_ms: int, warm: bool) -> str:
    return f"{min_ms}" if warm else f"{min_ms}, echo canceller cold"


# --- 4. the TTS engine alone ---


@dataclass(frozen=True)
class Synthesis:
    engine: str
    text: str
    first_chunk_ms: float
    total_ms: float
    audio_s: float

    @property
    def rtf(self) -> float:
        return self.total_ms / 1000 / self.audio_s if self.audio_s else float("inf")


def synthesise(engine: TTSEngine, text: str) -> Synthesis:
    """Blocking: run it in a thread (the speech server shares the event loop)."""
    started = time.perf_counter()
    first: float | None = None
    samples = 0
    for chunk in engine.synthesize(text):
        if first is None:
            first = time.perf_counter()
        samples += len(chunk)
    done = time.perf_counter()
    return Synthesis(
        engine.name,
        text,
        1000 * ((first or done) - started),
        1000 * (done - started),
        samples / engine.sample_rate,
    )


async def tts_alone(piper: PiperEngine, texts: Sequence[str]) -> list[Synthesis]:
    out = []
    async with speech_server(engine=piper) as (_, url):
        remote = OpenAISpeechEngine(url, "tts-1", "alloy")
        engines: tuple[TTSEngine, ...] = (piper, remote)
        for engine in engines:  # one-off costs: the HTTP server's first request
            await asyncio.to_thread(synthesise, engine, "Hello there.")
        for text in texts:
            for engine in engines:  # interleaved: the machine's state is shared alike
                out.append(await asyncio.to_thread(synthesise, engine, text))
    return out


# --- the whole run ---


@dataclass
class Results:
    baseline_ms: list[float] = field(default_factory=list)
    turns: list[VoiceTurn] = field(default_factory=list)
    continuity: list[ContinuityRun] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    barge_in_outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    tts: list[Synthesis] = field(default_factory=list)
    first_piece: list[Synthesis] = field(default_factory=list)  # Piper alone on it
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    warmup: Sentence
    sentences: list[Sentence]
    asr: ASREngine
    piper: PiperEngine
    steady: SteadyPiper
    pieces: list[IdealPiece]
    first_piece: Int16Array


async def run_all(prep: Prepared, args: argparse.Namespace, results: Results) -> None:
    quick = args.quick
    state = FakeOllama(
        first_token_delay_s=args.first_token_ms / 1000,
        token_interval_s=TOKEN_INTERVAL_S,
        reply=REPLY,
    )

    async def phase(name: str, work: Callable[[], Awaitable[None]]) -> None:
        print(f"{name}…", flush=True)
        try:
            await work()
        except Exception as exc:  # one broken phase should not cost the others' numbers
            logger.exception("voice benchmark: %s failed", name)
            results.errors[name] = f"{type(exc).__name__}: {exc}"

    async def baseline() -> None:
        trials = QUICK_BASELINE_TRIALS if quick else BASELINE_TRIALS
        rate = prep.piper.sample_rate
        results.baseline_ms = await jitter_baseline(prep.first_piece, rate, trials)

    async with fake_ollama(state=state) as (_, url):
        config = gateway_config(url, args.vad_silence_ms)

        async def voice() -> None:
            async with gateway(config, prep.asr, prep.piper) as http:
                results.turns = await voice_to_voice(http, prep.warmup, prep.sentences)

        async def flow() -> None:
            async with gateway(config, prep.asr, prep.steady) as http:
                results.continuity = await continuity(http, prep.pieces, CONCURRENT)

        async def barge() -> None:
            trials = QUICK_BARGE_IN_TRIALS if quick else BARGE_IN_TRIALS
            await barge_ins(url, args, prep.asr, prep.piper, prep.sentences, trials, results)

        await phase("baseline: a bare aiortc pair", baseline)
        await phase(f"voice to voice: {len(prep.sentences)} spoken questions", voice)
        await phase(f"continuity: 1 client, then {CONCURRENT} at once", flow)
        await phase("barge-in", barge)

    async def engines() -> None:
        results.tts = await tts_alone(prep.piper, [s.text for s in prep.sentences])
        for _ in range(FIRST_PIECE_REPEATS):  # the voice's first words, as in part 1
            synthesis = await asyncio.to_thread(synthesise, prep.piper, prep.pieces[0].text)
            results.first_piece.append(synthesis)

    await phase("TTS engines alone", engines)


def prepare(args: argparse.Namespace) -> Prepared:
    warmup, sentences = prepare_sentences(args.quick)
    print(f"loading {ASR} {MODEL} and the Piper voice…", flush=True)
    asr = load_engine(ASR, MODEL, DEVICE)
    asr.transcribe(warmup.audio, None)  # the first call pays lazy set-up
    piper = PiperEngine(None, cache_dir=default_cache_dir())
    steady = SteadyPiper(None, cache_dir=default_cache_dir())
    pieces = ideal_pieces(steady, REPLY)  # also the steady voice's first run
    first_piece = np.concatenate(list(piper.synthesize(pieces[0].text)))
    return Prepared(warmup, sentences, asr, piper, steady, pieces, first_piece)


# --- summary ---


def dist(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": mean(values),
        "max": max(values, default=None),
    }


def summarise(results: Results, pieces: Sequence[IdealPiece]) -> dict[str, Any]:
    counted = [t for t in results.turns if t.finals == 1 and not t.errors]

    def turns(key: str) -> list[float]:
        return [float(v) for t in counted if (v := getattr(t, key)) is not None]

    def spans(start: str, end: str) -> list[float]:
        return [v for t in counted if (v := t.between(start, end)) is not None]

    first_words = len(pieces[0].text.split()) if pieces else 0
    gap = spans("first_delta_ms", "first_audio_ms")
    voice = {
        "turns": len(results.turns),
        "counted": len(counted),
        "baseline_ms": dist(results.baseline_ms),
        "eos_to_first_delta_ms": dist(turns("first_delta_ms")),
        "eos_to_first_audio_ms": dist(turns("first_audio_ms")),
        "first_delta_to_first_audio_ms": dist(gap),
        "first_delta_to_audio_started_ms": dist(spans("first_delta_ms", "audio_started_ms")),
        "tts_first_audio_ms": dist(turns("tts_first_audio_ms")),
        "first_piece_text_ms": 1000 * TOKEN_INTERVAL_S * max(first_words - 1, 0),
        "audio_started_to_first_audio_ms": dist(spans("audio_started_ms", "first_audio_ms")),
        "under_target": sum(1 for v in gap if v <= VOICE_TARGET_MS),
        "piper_alone_first_piece_ms": dist([s.first_chunk_ms for s in results.first_piece]),
    }
    barge: dict[str, Any] = {}
    for trial in results.barge_ins:
        key = barge_in_label(trial.barge_in_min_ms, trial.warm)
        barge.setdefault(key, []).append(trial)
    barge_summary = {}
    for key, trials in barge.items():
        silent = [t.silent_ms for t in trials if t.silent_ms is not None]
        p95 = percentile(silent, 95)
        barge_summary[key] = {
            "trials": len(trials),
            "measured": len(silent),
            "interrupted": sum(1 for t in trials if t.interrupted),
            "in_pause": sum(1 for t in trials if t.in_pause),
            "silent_ms": dist(silent),
            "speech_started_ms": dist(
                [t.speech_started_ms for t in trials if t.speech_started_ms is not None]
            ),
            "meets_target": None if p95 is None else p95 <= BARGE_IN_TARGET_MS,
            "gateway_barge_ins": results.barge_in_outcomes.get(key, {}),
        }
    tts = {}
    for name in dict.fromkeys(s.engine for s in results.tts):
        rows = [s for s in results.tts if s.engine == name]
        tts[name] = {
            "sentences": len(rows),
            "first_chunk_ms": dist([s.first_chunk_ms for s in rows]),
            "rtf": dist([s.rtf for s in rows]),
            "audio_s": sum(s.audio_s for s in rows),
        }
    flow = [
        {
            "listeners": run.listeners,
            "finished": run.finished,
            "gateway_underruns": run.underruns,
            "loop_lag_max_ms": run.loop_lag_max_ms,
            "loop_lags_over_limit": run.loop_lags_over_limit,
            "cpu_cores": run.cpu_cores,
            "clients": [
                {
                    **asdict(heard),
                    "gaps_in_sentences": len(heard.gaps),
                    "longest_gap_ms": heard.longest_gap_ms,
                }
                for heard in run.heard
            ],
        }
        for run in results.continuity
    ]
    return {"voice": voice, "continuity": flow, "barge_in": barge_summary, "tts": tts}


def _ms(d: dict[str, Any], q: str = "p50") -> str:
    return fmt(d[q], suffix=" ms")


def voice_table(v: dict[str, Any], first_token_ms: int) -> str:
    header = ("measure (at the client unless marked)", "n", "p50", "p95", "max")

    def row(name: str, d: dict[str, Any]) -> list[str]:
        return [name, str(d["n"]), _ms(d), _ms(d, "p95"), _ms(d, "max")]

    text_ms = v["first_piece_text_ms"]
    return markdown_table(
        header,
        [
            row(
                "baseline: bare aiortc pair, audio put on a ReplyAudioTrack → first audible frame",
                v["baseline_ms"],
            ),
            row("end of speech → first reply.delta", v["eos_to_first_delta_ms"]),
            row("end of speech → first audible reply frame", v["eos_to_first_audio_ms"]),
            row(
                f"**first reply.delta → first audible reply frame** (target ≤ "
                f"{VOICE_TARGET_MS:.0f} ms)",
                v["first_delta_to_first_audio_ms"],
            ),
            row(
                "· first reply.delta → reply.audio.started (the gateway: first voice frame out)",
                v["first_delta_to_audio_started_ms"],
            ),
            [
                f"· · of which the first piece's text still streaming (fixed, test Ollama "
                f"{first_token_ms} ms + {1000 * TOKEN_INTERVAL_S:.0f} ms/word)",
                "-",
                fmt(text_ms, suffix=" ms"),
                fmt(text_ms, suffix=" ms"),
                fmt(text_ms, suffix=" ms"),
            ],
            row(
                "· · of which TTS request → first chunk (gateway's tts_first_audio_ms)",
                v["tts_first_audio_ms"],
            ),
            row(
                "· reply.audio.started → first audible frame (transport + client jitter buffer)",
                v["audio_started_to_first_audio_ms"],
            ),
        ],
    )


def continuity_table(flow: Sequence[dict[str, Any]]) -> str:
    header = (
        "listener",
        "pieces (misaligned)",
        "spoken",
        f"gaps > {GAP_LIMIT_MS:.0f} ms in a sentence",
        "longest in a sentence",
        f"late frames > {GAP_LIMIT_MS:.0f} ms (any)",
        "longest late frame",
        "added pause at sentence ends, max",
        "first audio after the question",
    )
    rows = []
    for run in flow:
        n = run["listeners"]
        for i, c in enumerate(run["clients"], 1):
            pauses = c["sentence_pauses_ms"]
            rows.append(
                [
                    "alone" if n == 1 else f"{i} of {n} at once",
                    f"{c['pieces']} ({c['misaligned']})",
                    fmt(c["spoken_s"], 1, " s"),
                    str(c["gaps_in_sentences"]),
                    fmt(c["longest_gap_ms"], suffix=" ms"),
                    str(c["late_frames"]),
                    fmt(c["longest_late_ms"], suffix=" ms"),
                    fmt(max(pauses, default=None), suffix=" ms"),
                    fmt(c["first_audio_ms"], suffix=" ms"),
                ]
            )
    return markdown_table(header, rows)


def barge_in_table(barge: dict[str, Any]) -> str:
    header = (
        "--barge-in-min-ms",
        "trials",
        "cut",
        "mic speech → reply silent p50",
        "p95",
        "max",
        "mic speech → speech.started p50",
        "began in a pause",
        f"p95 ≤ {BARGE_IN_TARGET_MS:.0f} ms",
    )
    rows = []
    for key, b in barge.items():
        verdict = b["meets_target"]
        rows.append(
            [
                key,
                f"{b['measured']}/{b['trials']}",
                str(b["interrupted"]),
                _ms(b["silent_ms"]),
                _ms(b["silent_ms"], "p95"),
                _ms(b["silent_ms"], "max"),
                _ms(b["speech_started_ms"]),
                str(b["in_pause"]),
                "-" if verdict is None else ("yes" if verdict else "no"),
            ]
        )
    return markdown_table(header, rows)


def tts_table(tts: dict[str, Any]) -> str:
    header = ("engine", "sentences", "first chunk p50", "p95", "RTF p50", "RTF mean", "audio")
    rows = [
        [
            "piper (in process)" if name == "piper" else f"{name} (speech_server, same voice)",
            str(t["sentences"]),
            _ms(t["first_chunk_ms"]),
            _ms(t["first_chunk_ms"], "p95"),
            fmt(t["rtf"]["p50"], 3),
            fmt(t["rtf"]["mean"], 3),
            fmt(t["audio_s"], 1, " s"),
        ]
        for name, t in tts.items()
    ]
    return markdown_table(header, rows)


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_first_token_argument(parser)
    add_vad_silence_argument(parser)
    parser.add_argument(
        "--barge-in-low-ms",
        type=int,
        default=BARGE_IN_LOW_MS,
        metavar="MS",
        help="the lower --barge-in-min-ms measured beside the default (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    recording = Recording("voice")
    prep = prepare(args)
    results = Results()
    asyncio.run(run_all(prep, args, results))
    summary = summarise(results, prep.pieces)

    machine = recording.machine_after()
    out_path: Path = args.out / "voice.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "asr": f"{ASR} {MODEL} on {DEVICE}",
                "tts": f"piper {prep.piper.voice} (continuity: sampling noise off)",
                "vad_silence_ms": args.vad_silence_ms,
                "first_token_delay_ms": args.first_token_ms,
                "token_interval_ms": 1000 * TOKEN_INTERVAL_S,
                "reply": REPLY,
                "pieces": [
                    {"text": p.text, "chunks": p.chunks, "audio_s": round(p.length / RATE, 3)}
                    for p in prep.pieces
                ],
                "concurrent": CONCURRENT,
                "floor": FLOOR,
                "gap_limit_ms": GAP_LIMIT_MS,
                "targets_ms": {
                    "first_delta_to_first_audio": VOICE_TARGET_MS,
                    "barge_in_p95": BARGE_IN_TARGET_MS,
                },
                "barge_in": [
                    barge_in_label(Config().barge_in_min_ms, True),
                    barge_in_label(args.barge_in_low_ms, True),
                    barge_in_label(Config().barge_in_min_ms, False),
                ],
                "echo_cancellation": "true in every offer but the cold barge-in runs",
                "sentences": [s.text for s in prep.sentences],
            },
            "summary": summary,
            "errors": results.errors,
            "baseline_ms": results.baseline_ms,
            "turns": [
                {"reference": s.text, **asdict(t)}
                for s, t in zip(prep.sentences, results.turns, strict=False)
            ],
            "barge_ins": [asdict(t) for t in results.barge_ins],
            "tts": [{**asdict(s), "rtf": s.rtf} for s in results.tts],
        },
    )

    v = summary["voice"]
    print()
    print(
        f"{ASR} {MODEL} on CPU, Piper {prep.piper.voice}; test Ollama: first token after "
        f"{args.first_token_ms} ms, a word every {1000 * TOKEN_INTERVAL_S:.0f} ms; VAD silence "
        f"{args.vad_silence_ms} ms; {machine['cpus_usable']} CPUs, load average "
        f"{machine['load_average'][0]:.2f}"
    )
    print()
    print(f"Voice to voice ({v['counted']} of {v['turns']} turns counted: one final, no error)")
    print(voice_table(v, args.first_token_ms))
    print(
        f"- first delta → first audio within {VOICE_TARGET_MS:.0f} ms in {v['under_target']} "
        f"of {v['first_delta_to_first_audio_ms']['n']} turns; Piper alone on the first piece "
        f"({prep.pieces[0].text!r}): first chunk p50 "
        f"{_ms(v['piper_alone_first_piece_ms'])}"
    )
    print()
    print(
        f"Continuity: the whole reply ({len(prep.pieces)} pieces), alone and {CONCURRENT} at once"
    )
    print(continuity_table(summary["continuity"]))
    for run_summary in summary["continuity"]:
        clients = run_summary["clients"]
        clause = [fmt(max(c["clause_pauses_ms"], default=None), suffix=" ms") for c in clients]
        stalled = ", ".join(f"{c['late_in_loop_stall']}/{c['late_frames']}" for c in clients)
        over_80 = ", ".join(str(c["late_over_80ms"]) for c in clients)
        print(
            f"- {run_summary['listeners']} listener(s): {run_summary['finished']} heard it to "
            f"the end; late frames that arrived as the shared loop woke late: {stalled}; late "
            f"by > 80 ms: {over_80}; "
            f"gateway mid-piece underruns {fmt(run_summary['gateway_underruns'])}; "
            f"added pause first clause → rest of its sentence: {', '.join(clause)}; shared "
            f"event loop late by > {GAP_LIMIT_MS:.0f} ms {run_summary['loop_lags_over_limit']} "
            f"times (max {fmt(run_summary['loop_lag_max_ms'])} ms); this process used "
            f"{run_summary['cpu_cores']:.2f} cores"
        )
    chunks = [p.chunks for p in prep.pieces]
    print(f"- Piper chunks per piece: {chunks}")
    print()
    print("Barge-in: the client speaks over the reply")
    print(barge_in_table(summary["barge_in"]))
    for key, b in summary["barge_in"].items():
        outcomes = ", ".join(f"{k} {v:.0f}" for k, v in b["gateway_barge_ins"].items())
        print(
            f"- {key}: the gateway's own count of speech while it spoke: "
            + (outcomes or "none (at or under its 160 ms min_speech it interrupts uncounted)")
        )
    print()
    print("TTS engines alone, over the same held-out sentences")
    print(tts_table(summary["tts"]))
    for turn, sentence in zip(results.turns, prep.sentences, strict=False):
        if turn.errors or turn.finals != 1:
            print(f"- turn {sentence.text!r}: {turn.finals} finals; {'; '.join(turn.errors)}")
    for trial in results.barge_ins:
        if trial.errors:
            label = barge_in_label(trial.barge_in_min_ms, trial.warm)
            print(f"- barge-in ({label}): {'; '.join(trial.errors)}")
    for name, error in results.errors.items():
        print(f"- {name} failed: {error}")
    print(f"\nwrote {out_path}")
    return 1 if results.errors else 0


BENCHMARK = Benchmark(
    name="voice",
    help="spoken replies at a WebRTC client: voice to voice against the first delta, "
    "continuity with 4 sessions, barge-in, and the TTS engines alone",
    add_arguments=add_arguments,
    run=run,
)
