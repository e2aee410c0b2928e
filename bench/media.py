"""Media path: server CPU per inbound microphone stream, and frames lost, at 10, 50, 100 streams.

Three servers, each in its own process (or processes) on 127.0.0.1, take the same senders in
turn (``--servers`` picks some):

- ``gateway``: the real application (``gateway.http.app.build_app``, no TLS, its configured ASR
  engine loaded on the CPU as ``serve`` loads it, Ollama pointed at a closed port). Every
  frame goes through its whole media path: its own jitter buffer, Opus decoded straight to
  16 kHz mono, Silero per 32 ms chunk (unless far below speech), the endpointer, frame and
  loss counters.
- ``baseline``: a plain aiortc receive loop, the way aiortc's ``examples/server/server.py``
  receives audio: POST /offer, ``pc.on("track")`` → ``MediaBlackhole``, which awaits
  ``track.recv()`` and drops the frame. A pass-through wrapper counts frames for the report.
- ``workers2``: ``python -m gateway serve --workers 2 --no-tls``, a real process tree: the
  front (HTTP, admission, relaying each offer to the worker with the fewest sessions), two
  media workers (each the gateway's whole media path, as above) and the ASR server, set up
  as the in-process gateway is. It is measured from outside: its CPU is the sum over every
  process under the front (``/proc/<pid>/stat`` utime + stime), its UDP drops those of every
  socket the tree holds, its frames the front's ``/metrics`` summed over the workers; the
  "event loop" is the busiest worker's main thread. Its log goes to ``OUT/media-workers2.log``.
  The second verdict is issue 12's: 100 streams on ``--workers 2`` with no frame lost.

Senders are aiortc peers spread over a few worker processes (spawned, one event loop each),
each with an ``events`` data channel as a browser has, sending 20 ms Opus frames paced in
real time. The Opus is encoded once per worker (low-level noise) and replayed: encoding
costs ~0.2 ms a frame (1% of a core per stream), which on a 2-core machine would leave the
server too little CPU to measure. Its level (``--noise-dbfs``, default -50.5 dB RMS) is
above the one under which the gateway skips Silero (``media.vad.SILENT_DBFS``), so Silero
runs on every chunk, and below Silero's threshold, so the gateway never endpoints an
utterance and Whisper never runs: this measures the media path alone (the JSON records
``utterances``, which should stay 0). Senders run at nice 10: they are the load, and the
server under test should get the CPU first (the machine's other work still competes with
it on equal terms).

For each level, after every sender has connected and a warm-up, each process reports its
own CPU time (``time.process_time``: user + system, all threads, aiortc's decoder threads
included) at the start and end of the window. CPU % per stream = server CPU seconds /
window / streams. Frames lost are gaps in the RTP timestamps of the frames the server
decoded (how ``gateway_audio_frames_lost_total`` counts them; the gateway's numbers are read
from its ``/metrics``).

"Decoded / sent" compares the frames the server's reader took from the track with those the
senders sent in the same window. A server that falls behind reads fewer: its packets wait
in the kernel's socket buffers until these overflow ("UDP drops": the kernel's drop counts
for the server's own sockets), and RTP gaps appear only once the reader gets that far.
"CPU per frame" (server CPU / frames decoded) stays fair when the server was starved; the
ratio uses it. "Event loop" is the loop thread's own CPU as a share of one core. It shares
one GIL with aiortc's decoder threads (one per stream), so a process can fall behind before
its loop reaches 100%; the gateway's loop lag (``gateway_event_loop_lag_seconds``) is in
the JSON. Before the servers start, each stage of the gateway's path (Opus straight to
16 kHz mono, the conversion to float, Silero and the endpointer) is timed per frame in one
thread, with aiortc's own Opus decoding for scale.

The machine is shared with other work (browser tests, the test suite): ``/proc/stat`` gives
how busy all its CPUs were during each window, whoever used them. A row is flagged
"saturated" when the machine (or this benchmark alone) used ≥ 90% of every core: then the
server competed for CPU, and its frames may have been late or lost for want of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fractions
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
from aiohttp import ClientSession, ClientTimeout, web
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.contrib.media import MediaBlackhole
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from bench import proctree
from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    write_json,
)

logger = logging.getLogger(__name__)

ServerKind = Literal["baseline", "gateway", "workers2"]
SERVERS: tuple[ServerKind, ...] = ("baseline", "gateway", "workers2")

LEVELS = (10, 50, 100)
QUICK_LEVELS = (10, 50)
WARMUP_S, QUICK_WARMUP_S = 5.0, 3.0
WINDOW_S, QUICK_WINDOW_S = 20.0, 10.0
CLIENTS_PER_PROCESS = 25
SENDER_NICE = 10

TARGET_STREAMS = 50
TARGET_PCT_PER_STREAM = 1.5
WORKERS = 2  # media workers of the ``workers2`` server
WORKERS_TARGET_STREAMS = 100  # issue 12: this many streams on 2 workers, no frame lost
SATURATED = 0.9  # share of every core in use above which the row is flagged
KEPT_UP = 0.98  # decoded / sent under this: the server fell behind real time
STAGE_FRAMES = 500  # 10 s of audio through each gateway stage, for the breakdown

RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, what browsers send
FRAME_S = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)
NOISE_DBFS = -50.5  # RMS (0.003 of full scale); Silero peaks ~0.1 on it, under its thresholds
NOISE_FRAMES = 100  # a 2 s loop

# Every wait is bounded; a child also exits by itself once its lifetime is over, so that
# nothing outlives a parent that was killed.
SERVER_START_TIMEOUT_S = 120.0  # the gateway imports torch and loads Whisper
# Front, workers and ASR server each import torch, on the same few cores.
WORKERS_START_TIMEOUT_S = 300.0
WORKERS_STOP_TIMEOUT_S = 30.0  # SIGTERM to the front → the whole tree gone
CONNECT_TIMEOUT_S = 20.0  # one client: offer, answer, ICE and DTLS
CONNECT_CONCURRENCY = 4  # per worker: offers in flight at once
COMMAND_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 10.0
SETTLE_S = 1.0  # after closing a level: let the server's teardown finish before the next


class BenchError(Exception):
    pass


# --- what a sender plays ---


def encode_noise(
    frames: int = NOISE_FRAMES, dbfs: float = NOISE_DBFS, seed: int = 0
) -> list[bytes]:
    """Opus packets of low-level noise (``dbfs`` RMS), encoded by aiortc's own encoder
    and settings."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(frames * FRAME_SAMPLES) * 10 ** (dbfs / 20)
    pcm = (np.clip(noise, -1.0, 1.0) * 32767).astype("<i2")
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = RATE
        frame.pts = i * FRAME_SAMPLES
        frame.time_base = TIME_BASE
        payloads, _ = encoder.encode(frame)
        packets += payloads
    return packets


class NoiseTrack(MediaStreamTrack):
    """Pre-encoded Opus packets, one every 20 ms on an absolute schedule, like a
    microphone: a late frame goes at once and the schedule is not moved (no gap in the RTP
    timestamps, as a browser after a stall)."""

    kind = "audio"

    def __init__(self, packets: Sequence[bytes]) -> None:
        super().__init__()
        self._packets = packets
        self._start: float | None = None
        self._index = 0
        self.sent = 0
        self.max_lag_s = 0.0  # since the last mark: how far behind schedule a frame left

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._index * FRAME_S - now
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                self.max_lag_s = max(self.max_lag_s, -wait)
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        packet.pts = self._index * FRAME_SAMPLES
        packet.time_base = TIME_BASE
        self._index += 1
        self.sent += 1
        return packet


# --- child processes: a pipe of (command, *args) → reply dict ---

Handler = Callable[[tuple[Any, ...]], Awaitable[dict[str, Any]]]


async def serve_commands(conn: Connection, handle: Handler, lifetime_s: float) -> None:
    """Answer the parent's commands, ``(seq, name, *args)``, until ``exit``, the parent's
    end of the pipe closing, or ``lifetime_s`` passing. Replies carry ``seq``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + lifetime_s
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        while True:
            try:
                await asyncio.wait_for(readable.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                logger.warning("child %d: lifetime over, exiting", os.getpid())
                return
            readable.clear()
            while conn.poll():
                try:
                    seq, *message = conn.recv()
                except EOFError:
                    return  # the parent is gone
                if message[0] == "exit":
                    conn.send({"seq": seq})
                    return
                try:
                    reply = await handle(tuple(message))
                except Exception as exc:
                    logger.exception("command %s failed", message[0])
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                conn.send({**reply, "seq": seq})
    finally:
        loop.remove_reader(conn.fileno())


def _child_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )
    if not verbose:
        # Ollama is unreachable on purpose; the gateway rightly warns about it at start-up.
        logging.getLogger("gateway.http.app").setLevel(logging.ERROR)
        logging.getLogger("asyncio").addFilter(_DropTeardownNoise())


def _mark() -> dict[str, Any]:
    """Called on the event loop's thread, so ``loop_cpu`` is that thread's alone: it shows
    when one loop, rather than the machine, is the limit."""
    return {
        "t": time.monotonic(),
        "cpu": time.process_time(),
        "loop_cpu": time.thread_time(),
        "rss_mb": _rss_mb(),
        **udp_sockets(),
    }


def udp_sockets() -> dict[str, int]:
    """This process's UDP sockets, from the kernel's tables: datagrams dropped because a
    receive buffer was full, and bytes waiting to be read (a backlog). Empty off Linux."""
    return proctree.udp_sockets(("self",))


def _rss_mb() -> float | None:
    return proctree.rss_mb("self")


class _DropTeardownNoise(logging.Filter):
    """aiortc's SCTP transmit task can outlive its DTLS transport when the other side
    closes first; asyncio then logs its ConnectionError ("never retrieved"). Harmless here."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return (
            not (isinstance(error, ConnectionError) and "not connected" in str(error))
            and "Cannot send encrypted data" not in record.getMessage()
        )


# --- the servers ---


class FrameCounter:
    """Frames decoded, and frames missing by RTP timestamp, as the gateway counts them."""

    def __init__(self) -> None:
        self.received = 0
        self.lost = 0

    def track(self, source: MediaStreamTrack) -> MediaStreamTrack:
        return _CountingTrack(source, self)


class _CountingTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source: MediaStreamTrack, counter: FrameCounter) -> None:
        super().__init__()
        self._source = source
        self._counter = counter
        self._next_pts: int | None = None

    async def recv(self) -> av.AudioFrame:
        frame = await self._source.recv()
        if not isinstance(frame, av.AudioFrame):
            raise MediaStreamError("expected audio frames")
        self._counter.received += 1
        pts, size = frame.pts, frame.samples
        if pts is not None and size > 0:
            if self._next_pts is not None and pts > self._next_pts:
                self._counter.lost += (pts - self._next_pts) // size
            self._next_pts = pts + size
        return frame


@dataclass
class BaselineServer:
    """aiortc's server example, receive side only: one MediaBlackhole per connection."""

    counter: FrameCounter = field(default_factory=FrameCounter)
    pcs: set[RTCPeerConnection] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/offer", self.offer)
        app.on_shutdown.append(lambda _: self.close_all())
        return app

    async def offer(self, request: web.Request) -> web.Response:
        params = await request.json()
        # As the gateway does: with no ICE servers aiortc would try a public STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.add(pc)
        recorder = MediaBlackhole()

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            pass  # the example echoes pings; these clients send none

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                recorder.addTrack(self.counter.track(track))

            @track.on("ended")
            async def on_ended() -> None:
                await recorder.stop()

        await pc.setRemoteDescription(RTCSessionDescription(params["sdp"], params["type"]))
        await recorder.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def _close(self, pc: RTCPeerConnection) -> None:
        self.pcs.discard(pc)
        await pc.close()

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close(pc) for pc in list(self.pcs)))

    async def stats(self) -> dict[str, Any]:
        return {
            "frames_received": self.counter.received,
            "frames_lost": self.counter.lost,
            "sessions": len(self.pcs),
        }


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """A URL where nothing listens: the port is held bound, so nothing else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# /metrics samples the report reads, and what they are called in it.
GATEWAY_METRICS = {
    "gateway_audio_frames_received_total": "frames_received",
    "gateway_audio_frames_lost_total": "frames_lost",
    "gateway_sessions_active": "sessions",
    "gateway_sessions_ended_total": "sessions_ended",  # every reason (each is in the JSON)
    "gateway_utterances_total": "utterances",
    "gateway_event_loop_lag_seconds": "loop_lag_s",
}


# Added over workers, except these: the worst of them.
WORST_OF_WORKERS = frozenset({"loop_lag_s"})


def metrics_by_worker(text: str) -> dict[str, dict[str, float]]:
    """The samples the report reads, per ``worker`` label (the front's ``/metrics`` under
    ``--workers N``); a single process's samples, which have none, under ``""``."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in GATEWAY_METRICS:
                worker = out.setdefault(
                    sample.labels.get("worker", ""), dict.fromkeys(GATEWAY_METRICS.values(), 0.0)
                )
                worker[GATEWAY_METRICS[sample.name]] += float(sample.value)
    return out


def ended_by_reason(text: str) -> dict[str, float]:
    """Sessions ended so far, by reason, over every worker."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_sessions_ended_total":
                reason = sample.labels.get("reason", "")
                out[reason] = out.get(reason, 0.0) + float(sample.value)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """The report's samples for the whole server: summed over workers (frames, sessions,
    utterances), the worst worker's event-loop lag."""
    out = dict.fromkeys(GATEWAY_METRICS.values(), 0.0)
    for worker in metrics_by_worker(text).values():
        for name, value in worker.items():
            out[name] = max(out[name], value) if name in WORST_OF_WORKERS else out[name] + value
    return out


async def _run_server(kind: ServerKind, conn: Connection, streams: int, lifetime_s: float) -> None:
    # Deferred: sender processes import this module too and need none of the gateway.
    from gateway.http.app import build_app
    from gateway.http.state import SESSIONS
    from gateway.ops.config import Config

    with closed_port() as ollama_host:
        baseline = BaselineServer()
        if kind == "gateway":
            config = Config(
                admission="off",
                no_tls=True,
                tts_engine="none",
                asr_device="cpu",
                max_sessions=streams + 10,
                sessions_per_client=streams + 10,  # every sender is 127.0.0.1
                offer_rate=10_000,
                ollama_host=ollama_host,
            )
            app = build_app(config)  # loads the configured engine, as ``serve`` does
        else:
            app = baseline.app()
        runner = web.AppRunner(app)
        started = time.perf_counter()
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = int(runner.addresses[0][1])
            conn.send({"port": port, "start_s": time.perf_counter() - started})
            timeout = ClientTimeout(total=COMMAND_TIMEOUT_S)
            async with ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:

                async def stats() -> dict[str, Any]:
                    if kind == "baseline":
                        return await baseline.stats()
                    async with http.get("/metrics") as response:
                        text = await response.text()
                    return {**parse_metrics(text), "ended": ended_by_reason(text)}

                async def handle(message: tuple[Any, ...]) -> dict[str, Any]:
                    if message[0] == "mark":
                        return {**_mark(), **await stats()}
                    if message[0] == "reset":  # between levels, not measured
                        if kind == "gateway":
                            await app[SESSIONS].close_all("bench")
                        else:
                            await baseline.close_all()
                        return await stats()
                    raise BenchError(f"unknown command {message[0]!r}")

                await serve_commands(conn, handle, lifetime_s)
        finally:
            await asyncio.wait_for(runner.cleanup(), CLOSE_TIMEOUT_S)


# --- serve --workers 2: a process tree, measured from outside ---


def workers_argv(port: int, ollama_host: str, streams: int, verbose: bool) -> list[str]:
    """``serve --workers 2`` set up as the in-process gateway is (``_run_server``)."""
    return [
        sys.executable, "-m", "gateway", "serve",
        "--no-tls", "--host", "127.0.0.1", "--port", str(port),
        "--ollama-host", ollama_host,
        "--tts-engine", "none",
        "--asr-device", "cpu",
        "--max-sessions", str(streams + 10),
        "--sessions-per-client", str(streams + 10),  # every sender is 127.0.0.1
        "--offer-rate", "10000",
        "--log-level", "info" if verbose else "warning",
        "--workers", str(WORKERS),
        "--admission", "off",  # the media path past capacity is what is measured
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the front, before exec: SIGTERM (a drain) when this controller dies, however it
    dies, so that no gateway outlives the benchmark."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


async def _until_workers_ready(
    proc: asyncio.subprocess.Process, http: ClientSession, log_path: Path
) -> None:
    """Every worker answers (its samples are in the front's /metrics) and the ASR server
    has its model (the workers' ``asr`` check): nothing is still loading when a window
    starts. ``/ready`` itself stays 503, as Ollama is unreachable on purpose."""
    names = {f"w{i}" for i in range(1, WORKERS + 1)}
    deadline = time.monotonic() + WORKERS_START_TIMEOUT_S - 10
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise BenchError(
                f"serve --workers {WORKERS} exited ({proc.returncode}); see {log_path}"
            )
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            async with http.get("/metrics") as response:
                workers = set(metrics_by_worker(await response.text())) if response.ok else set()
            async with http.get("/ready") as response:
                checks = (await response.json()).get("checks", {})
            if names <= workers and checks.get("asr", {}).get("ok"):
                return
        await asyncio.sleep(0.5)
    raise BenchError(f"serve --workers {WORKERS} not up in time; see {log_path}")


async def _stop_tree(proc: asyncio.subprocess.Process, tree: Sequence[int]) -> None:
    """SIGTERM to the front (it stops its workers and the ASR server), SIGKILL after a
    while; then any process of the tree last seen that is still there (by its pid)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), WORKERS_STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("serve --workers %d did not stop on SIGTERM; killing it", WORKERS)
            proc.kill()
            await proc.wait()
    for pid in tree:
        argv = proctree.read_argv(pid)
        if pid != proc.pid and "gateway" in argv:
            logger.warning("killing %s (pid %d), left behind by the front", argv[3:4], pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def _run_workers_server(
    conn: Connection, streams: int, lifetime_s: float, log_path: Path, verbose: bool
) -> None:
    with closed_port() as ollama_host:
        port = _free_port()
        started = time.perf_counter()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *workers_argv(port, ollama_host, streams, verbose),
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        tree: Sequence[int] = (proc.pid,)
        try:
            timeout = ClientTimeout(total=COMMAND_TIMEOUT_S)
            async with ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
                await _until_workers_ready(proc, http, log_path)
                tree = proctree.sample_tree(proc.pid).pids
                conn.send({"port": port, "start_s": time.perf_counter() - started})

                async def stats() -> dict[str, Any]:
                    async with http.get("/metrics") as response:
                        text = await response.text()
                    return {
                        **parse_metrics(text),
                        "ended": ended_by_reason(text),
                        "workers": metrics_by_worker(text),
                    }

                async def handle(message: tuple[Any, ...]) -> dict[str, Any]:
                    nonlocal tree
                    if message[0] == "mark":
                        t = time.monotonic()
                        sample = proctree.sample_tree(proc.pid)
                        tree = sample.pids
                        return {
                            "t": t,
                            "cpu": sample.total_cpu_s,
                            "cpu_by_process": dict(sample.cpu_s),
                            "loop_cpu_by_process": dict(sample.main_thread_cpu_s),
                            "rss_mb": sample.rss_mb,
                            **sample.udp,
                            **await stats(),
                        }
                    if message[0] == "reset":  # between levels, not measured
                        # The senders have closed: each worker ends its sessions as their
                        # peers go (as it would for a browser that left).
                        deadline = time.monotonic() + CLOSE_TIMEOUT_S - 5
                        while True:
                            now = await stats()
                            if not now["sessions"] or time.monotonic() >= deadline:
                                break
                            await asyncio.sleep(0.25)
                        if now["sessions"]:
                            logger.warning("%.0f session(s) still open", now["sessions"])
                        return now
                    raise BenchError(f"unknown command {message[0]!r}")

                await serve_commands(conn, handle, lifetime_s)
        finally:
            await _stop_tree(proc, tree)


def server_main(
    conn: Connection,
    kind: ServerKind,
    streams: int,
    lifetime_s: float,
    verbose: bool,
    log_path: Path | None = None,
) -> None:
    _child_logging(verbose)
    try:
        if kind == "workers2":
            if log_path is None:
                raise BenchError("the workers2 server needs a log file")
            asyncio.run(_run_workers_server(conn, streams, lifetime_s, log_path, verbose))
        else:
            asyncio.run(_run_server(kind, conn, streams, lifetime_s))
    except Exception as exc:
        logger.exception("%s server failed", kind)
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


# --- the senders ---


@dataclass
class Sender:
    pc: RTCPeerConnection
    track: NoiseTrack


async def connect_sender(http: ClientSession, url: str, packets: Sequence[bytes]) -> Sender:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = NoiseTrack(packets)
    pc.addTrack(track)
    pc.createDataChannel("events")
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(f"{url}/offer", json=offer) as response:
                if response.status != 200:
                    raise BenchError(f"POST /offer: {response.status} {await response.text()}")
                answer = await response.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await connected.wait()
    except BaseException:
        track.stop()
        await asyncio.shield(pc.close())
        raise
    return Sender(pc, track)


async def _run_senders(conn: Connection, lifetime_s: float, noise_dbfs: float) -> None:
    packets = encode_noise(dbfs=noise_dbfs)
    senders: list[Sender] = []
    timeout = ClientTimeout(total=CONNECT_TIMEOUT_S)
    async with ClientSession(timeout=timeout) as http:

        async def connect(url: str, count: int) -> dict[str, Any]:
            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

            async def one() -> Sender:
                async with gate:
                    return await connect_sender(http, url, packets)

            results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
            errors = []
            for result in results:
                if isinstance(result, Sender):
                    senders.append(result)
                else:
                    errors.append(f"{type(result).__name__}: {result}")
            return {"connected": len(senders), "errors": errors}

        async def close() -> dict[str, Any]:
            for sender in senders:
                sender.track.stop()
            await asyncio.wait_for(
                asyncio.gather(*(s.pc.close() for s in senders), return_exceptions=True),
                CLOSE_TIMEOUT_S,
            )
            senders.clear()
            return {}

        async def handle(message: tuple[Any, ...]) -> dict[str, Any]:
            if message[0] == "connect":
                return await connect(str(message[1]), int(message[2]))
            if message[0] == "mark":
                lag = max((s.track.max_lag_s for s in senders), default=0.0)
                for sender in senders:
                    sender.track.max_lag_s = 0.0
                sent = sum(s.track.sent for s in senders)
                return {**_mark(), "sent": sent, "max_lag_s": lag, "streams": len(senders)}
            if message[0] == "close":
                return await close()
            raise BenchError(f"unknown command {message[0]!r}")

        try:
            await serve_commands(conn, handle, lifetime_s)
        finally:
            with contextlib.suppress(Exception):
                await close()


def sender_main(conn: Connection, lifetime_s: float, noise_dbfs: float, verbose: bool) -> None:
    _child_logging(verbose)
    with contextlib.suppress(OSError):  # the load generator yields to the server under test
        os.nice(SENDER_NICE)
    asyncio.run(_run_senders(conn, lifetime_s, noise_dbfs))


# --- the parent's side ---


class Child:
    """A spawned process and its end of the pipe; every call is bounded."""

    def __init__(
        self, ctx: SpawnContext, name: str, target: Callable[..., None], *args: Any
    ) -> None:
        self.name = name
        self.conn, child_conn = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(
            target=target, args=(child_conn, *args), name=name, daemon=True
        )
        self.process.start()
        child_conn.close()  # so that the child's exit reads as EOF here
        self._seq = 0

    def send(self, *message: Any) -> None:
        self._seq += 1
        self.conn.send((self._seq, *message))

    def reply(self, timeout_s: float) -> dict[str, Any]:
        """The answer to the last command sent; a late answer to an earlier one (after a
        timeout) is skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"{self.name}: no answer within {timeout_s:.0f} s")
            try:
                reply: dict[str, Any] = self.conn.recv()
            except EOFError:
                raise BenchError(f"{self.name}: exited (code {self.process.exitcode})") from None
            if reply.get("seq", self._seq) != self._seq:
                continue
            if "error" in reply:
                raise BenchError(f"{self.name}: {reply['error']}")
            return reply

    def call(self, *message: Any, timeout_s: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        self.send(*message)
        return self.reply(timeout_s)

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(BenchError, OSError):
                self.call("exit", timeout_s=CLOSE_TIMEOUT_S)
            self.process.join(JOIN_TIMEOUT_S)
        if self.process.is_alive():
            logger.warning("%s did not exit; terminating it", self.name)
            self.process.terminate()
            self.process.join(JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(JOIN_TIMEOUT_S)
        self.conn.close()


@contextlib.contextmanager
def children(made: list[Child]) -> Iterator[list[Child]]:
    try:
        yield made
    finally:
        for child in made:
            child.close()


def broadcast(targets: Sequence[Child], *message: Any, timeout_s: float) -> list[dict[str, Any]]:
    """The same command to every child at once, then every reply (one shared deadline)."""
    for child in targets:
        child.send(*message)
    deadline = time.monotonic() + timeout_s
    return [child.reply(max(0.0, deadline - time.monotonic())) for child in targets]


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every CPU since boot, whoever used them; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    ticks = [int(v) for v in fields[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


@dataclass
class Row:
    streams: int
    server: ServerKind
    connected: int = 0
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    server_loop_cpu_s: float = 0.0  # the event loop's thread alone (decoding is elsewhere)
    senders_cpu_s: float = 0.0
    frames_expected: int = 0  # streams * window / 20 ms
    frames_sent: int = 0
    frames_received: int = 0
    frames_lost: int = 0
    udp_drops: int | None = None  # the server's sockets, during the window
    udp_queued_kb: float | None = None  # unread in the server's sockets at the window's end
    sessions: float = 0.0
    utterances: float | None = None
    loop_lag_ms: float | None = None
    sender_max_lag_ms: float = 0.0
    server_rss_mb: tuple[float | None, float | None] = (None, None)  # window start, end
    # workers2: CPU seconds in the window of each process of the tree (front, w1, w2,
    # asr-server); the event loop reported is the busiest worker's (``loop_process``).
    cpu_by_process: dict[str, float] | None = None
    loop_process: str | None = None
    # A server with workers: per worker, frames decoded and lost in the window, and its
    # sessions at the window's end.
    by_worker: dict[str, dict[str, float]] | None = None
    # The gateway's sessions when the window started (``sessions``: when it ended), and
    # those that ended in the window, by reason: a stream connected whose session is gone.
    sessions_at_start: float | None = None
    sessions_ended: dict[str, float] | None = None
    sender_processes: int = 0
    machine_busy: float | None = None  # share of all CPUs in use, by anything
    connect_s: float = 0.0
    connect_errors: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def pct_per_stream(self) -> float | None:
        if not self.connected or self.window_s <= 0:
            return None
        return 100 * self.server_cpu_s / self.window_s / self.connected

    @property
    def us_per_frame(self) -> float | None:
        """Server CPU per frame decoded: fair even when the server was starved of CPU."""
        return 1e6 * self.server_cpu_s / self.frames_received if self.frames_received else None

    @property
    def bench_cores(self) -> float | None:
        return (self.server_cpu_s + self.senders_cpu_s) / self.window_s if self.window_s else None

    def saturated(self, cores: int) -> bool:
        bench = self.bench_cores
        return (self.machine_busy or 0.0) >= SATURATED or (
            bench is not None and bench >= SATURATED * cores
        )


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def connect_budget(streams: int, workers: int) -> float:
    """Offers queue at the server: each its own timeout, CONNECT_CONCURRENCY per worker."""
    return CONNECT_TIMEOUT_S * (1 + streams / CONNECT_CONCURRENCY / workers)


def run_budget(streams: int, workers: int, args: argparse.Namespace) -> float:
    """The most one server's run at one level can take, teardown included."""
    return connect_budget(streams, workers) + float(args.warmup + args.window) + 3 * CLOSE_TIMEOUT_S


def measure(
    server: Child,
    url: str,
    kind: ServerKind,
    workers: Sequence[Child],
    streams: int,
    warmup_s: float,
    window_s: float,
) -> Row:
    row = Row(streams, kind, sender_processes=len(workers))
    started = time.perf_counter()
    try:
        for worker, count in zip(workers, split(streams, len(workers)), strict=True):
            worker.send("connect", url, count)
        deadline = time.monotonic() + connect_budget(streams, len(workers))
        for worker in workers:
            reply = worker.reply(max(0.0, deadline - time.monotonic()))
            row.connected += int(reply["connected"])
            row.connect_errors += reply["errors"]
        row.connect_s = time.perf_counter() - started
        if not row.connected:
            raise BenchError(f"no sender connected: {row.connect_errors[:3]}")
        time.sleep(warmup_s)

        everyone = [server, *workers]
        machine0 = cpu_jiffies()
        first = broadcast(everyone, "mark", timeout_s=COMMAND_TIMEOUT_S)
        time.sleep(window_s)
        machine1 = cpu_jiffies()
        last = broadcast(everyone, "mark", timeout_s=COMMAND_TIMEOUT_S)

        (s0, *w0), (s1, *w1) = first, last
        row.window_s = s1["t"] - s0["t"]
        row.server_cpu_s = s1["cpu"] - s0["cpu"]
        if "loop_cpu_by_process" in s0:  # a process tree: its busiest worker's loop
            row.cpu_by_process = proctree.deltas(s0["cpu_by_process"], s1["cpu_by_process"])
            loops = proctree.deltas(s0["loop_cpu_by_process"], s1["loop_cpu_by_process"])
            loops = {name: cpu for name, cpu in loops.items() if name in s1["workers"]}
            if loops:
                row.loop_process = max(loops, key=loops.__getitem__)
                row.server_loop_cpu_s = loops[row.loop_process]
        else:
            row.server_loop_cpu_s = s1["loop_cpu"] - s0["loop_cpu"]
        if "workers" in s1:
            row.by_worker = worker_deltas(s0["workers"], s1["workers"])
        row.server_rss_mb = (s0["rss_mb"], s1["rss_mb"])
        row.senders_cpu_s = sum(b["cpu"] - a["cpu"] for a, b in zip(w0, w1, strict=True))
        row.frames_expected = round(row.connected * row.window_s / FRAME_S)
        row.frames_sent = sum(b["sent"] - a["sent"] for a, b in zip(w0, w1, strict=True))
        row.frames_received = int(s1["frames_received"] - s0["frames_received"])
        row.frames_lost = int(s1["frames_lost"] - s0["frames_lost"])
        row.sessions = s1["sessions"]
        if "ended" in s1:
            row.sessions_at_start = s0["sessions"]
            row.sessions_ended = {
                reason: n for reason, n in proctree.deltas(s0["ended"], s1["ended"]).items() if n
            } | {reason: n for reason, n in s1["ended"].items() if reason not in s0["ended"]}
        row.sender_max_lag_ms = 1000 * max(b["max_lag_s"] for b in w1)
        if kind != "baseline":
            row.utterances = s1["utterances"] - s0["utterances"]
            row.loop_lag_ms = 1000 * s1["loop_lag_s"]
        if "udp_drops" in s0 and "udp_drops" in s1:
            row.udp_drops = s1["udp_drops"] - s0["udp_drops"]
            row.udp_queued_kb = s1["udp_queued"] / 1024
        if machine0 and machine1:
            busy, total = (b - a for a, b in zip(machine0, machine1, strict=True))
            row.machine_busy = busy / total if total else None
    except BenchError as exc:
        logger.error("%s at %d streams: %s", kind, streams, exc)
        row.error = str(exc)
    finally:
        # Teardown is not measured; the next level starts from an empty server.
        with contextlib.suppress(BenchError):
            broadcast(workers, "close", timeout_s=CLOSE_TIMEOUT_S)
        with contextlib.suppress(BenchError):
            server.call("reset", timeout_s=CLOSE_TIMEOUT_S)
        time.sleep(SETTLE_S)
    return row


def worker_deltas(
    first: dict[str, dict[str, float]], last: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per worker: frames decoded and lost between two readings of the front's /metrics,
    and its sessions at the last."""
    return {
        name: {
            "frames_received": now["frames_received"] - first[name]["frames_received"],
            "frames_lost": now["frames_lost"] - first[name]["frames_lost"],
            "sessions": now["sessions"],
        }
        for name, now in sorted(last.items())
        if name in first
    }


def run_level(
    ctx: SpawnContext,
    servers: dict[ServerKind, tuple[Child, str]],
    order: Sequence[ServerKind],
    streams: int,
    args: argparse.Namespace,
) -> list[Row]:
    processes = max(1, math.ceil(streams / args.clients_per_process))
    # The senders live for this level: both servers, with their warm-ups and windows.
    lifetime = len(order) * run_budget(streams, processes, args)
    workers = [
        Child(ctx, f"senders-{streams}-{i}", sender_main, lifetime, args.noise_dbfs, args.verbose)
        for i in range(processes)
    ]
    with children(workers):
        rows = []
        for kind in order:
            child, url = servers[kind]
            print(f"  {streams} streams → {kind}…", flush=True)
            rows.append(measure(child, url, kind, workers, streams, args.warmup, args.window))
        return rows


def start_server(
    ctx: SpawnContext,
    kind: ServerKind,
    streams: int,
    lifetime_s: float,
    verbose: bool,
    log_path: Path | None = None,
) -> tuple[Child, str, float]:
    child = Child(ctx, f"{kind}-server", server_main, kind, streams, lifetime_s, verbose, log_path)
    try:
        ready = child.reply(
            WORKERS_START_TIMEOUT_S if kind == "workers2" else SERVER_START_TIMEOUT_S
        )
    except BenchError:
        child.close()
        raise
    return child, f"http://127.0.0.1:{ready['port']}", float(ready["start_s"])


# --- report ---


def summarise(rows: Sequence[Row], cores: int) -> list[dict[str, Any]]:
    baseline = {r.streams: r.us_per_frame for r in rows if r.server == "baseline"}
    out = []
    for r in rows:
        base, cost = baseline.get(r.streams), r.us_per_frame
        decoded = r.frames_received / r.frames_sent if r.frames_sent else None
        out.append(
            {
                **asdict(r),
                "pct_core_per_stream": r.pct_per_stream,
                "us_per_frame": cost,
                # What a stream costs when every frame is decoded in time: the same as the
                # measured figure unless the server fell behind for want of CPU.
                "pct_core_per_stream_real_time": (
                    None if cost is None else 100 * cost * 1e-6 / FRAME_S
                ),
                "ratio_vs_baseline": cost / base if cost is not None and base else None,
                "received_over_sent": decoded,
                "behind": decoded is not None and decoded < KEPT_UP,
                "sent_over_expected": (
                    r.frames_sent / r.frames_expected if r.frames_expected else None
                ),
                "loop_share_of_core": (r.server_loop_cpu_s / r.window_s if r.window_s else None),
                "pct_core_by_process": (
                    {name: 100 * cpu / r.window_s for name, cpu in r.cpu_by_process.items()}
                    if r.cpu_by_process is not None and r.window_s
                    else None
                ),
                "bench_cores": r.bench_cores,
                "saturated": r.saturated(cores),
            }
        )
    return out


def table(summary: Sequence[dict[str, Any]], cores: int) -> str:
    header = (
        "streams",
        "server",
        "CPU %/stream",
        "CPU per frame",
        "frames lost",
        "decoded / sent",
        "event loop",
        "ratio vs baseline",
        "server + senders",
        "machine busy",
        "sender max lag",
    )
    rows = []
    for s in summary:
        if s["error"]:
            rows.append([str(s["streams"]), s["server"], f"failed: {s['error']}", *["-"] * 8])
            continue
        decoded = s["received_over_sent"]
        busy = s["machine_busy"]
        load = fmt(None if busy is None else 100 * busy, suffix="%")
        if s["saturated"]:
            load += ", saturated"
        rows.append(
            [
                f"{s['connected']}"
                + ("" if s["connected"] == s["streams"] else f"/{s['streams']}"),
                s["server"],
                fmt(s["pct_core_per_stream"], 2, "%"),
                fmt(s["us_per_frame"], suffix=" µs"),
                f"{s['frames_lost']} of {s['frames_received']}"
                + (f" ({s['udp_drops']} UDP drops)" if s["udp_drops"] else ""),
                fmt(None if decoded is None else 100 * decoded, 1, "%")
                + (" (behind)" if s["behind"] else ""),
                fmt(_pct(s["loop_share_of_core"]), suffix="%"),
                fmt(s["ratio_vs_baseline"], 2, "x"),
                f"{fmt(s['bench_cores'], 2)} of {cores} cores",
                load,
                fmt(s["sender_max_lag_ms"], suffix=" ms"),
            ]
        )
    return markdown_table(header, rows)


def workers_verdict(summary: Sequence[dict[str, Any]]) -> str:
    """Issue 12: every stream read and VAD-processed by ``--workers 2``, none of its frames
    lost, at 100 streams; ``--workers 1`` and the plain loop at the same level for
    comparison. A frame the gateway reads goes through VAD before the next is read, so
    frames decoded are frames VAD-processed: "every stream" is every sender connected, a
    session for each, and each worker decoding in real time for its own sessions."""
    goal = (
        f"{WORKERS_TARGET_STREAMS} streams with --workers {WORKERS}: 0 frames lost, "
        "every stream VAD-processed"
    )
    at = {s["server"]: s for s in summary if s["streams"] == WORKERS_TARGET_STREAMS}
    s = at.get("workers2")
    if s is None or s["error"]:
        return f"{goal}: not measured" + (f" ({s['error']})" if s else "")
    window_frames = s["window_s"] / FRAME_S
    slow = [
        name
        for name, w in (s["by_worker"] or {}).items()
        if w["sessions"] and w["frames_received"] < KEPT_UP * w["sessions"] * window_frames
    ]
    every = (
        s["connected"] == s["streams"]
        and round(s["sessions"]) == s["streams"]
        and not s["behind"]
        and not slow
    )
    drops = s["udp_drops"] or 0
    met = every and not s["frames_lost"] and not drops
    decoded = s["received_over_sent"]
    text = (
        f"{goal}: {'met' if met else 'missed'} — {s['frames_lost']} lost of "
        f"{s['frames_received']} decoded, {drops} UDP drops, decoded/sent "
        f"{fmt(None if decoded is None else 100 * decoded, 1, '%')}, "
        f"{s['connected']}/{s['streams']} connected, {s['sessions']:.0f} sessions"
    )
    if s["by_worker"]:
        text += " (" + ", ".join(f"{n} {w['sessions']:.0f}" for n, w in s["by_worker"].items())
        text += ")"
    notes = [f"{', '.join(slow)} fell behind real time"] if slow else []
    for kind, label in (("gateway", "--workers 1"), ("baseline", "plain aiortc loop")):
        other = at.get(kind)
        if other is not None and not other["error"]:
            ratio = other["received_over_sent"]
            notes.append(
                f"{label}: {other['frames_lost']} lost, {other['udp_drops'] or 0} UDP drops, "
                f"decoded/sent {fmt(None if ratio is None else 100 * ratio, 1, '%')}"
            )
    if s["saturated"]:
        notes.append("machine saturated: the figures are not clean")
    return text + (f"; {'; '.join(notes)}" if notes else "")


def verdict(summary: Sequence[dict[str, Any]]) -> str:
    goal = (
        f"target (≤ {TARGET_PCT_PER_STREAM}% of a core per stream at {TARGET_STREAMS} streams, "
        "no frame lost)"
    )
    at = [s for s in summary if s["server"] == "gateway" and s["streams"] == TARGET_STREAMS]
    if not at or at[0]["error"] or at[0]["pct_core_per_stream"] is None:
        return f"{goal}: not measured"
    s = at[0]
    # A server starved of CPU spends less than a stream needs: judge it at real time.
    pct = max(s["pct_core_per_stream"], s["pct_core_per_stream_real_time"] or 0.0)
    lost = s["frames_lost"] or s["udp_drops"]
    met = pct <= TARGET_PCT_PER_STREAM and not lost and not s["behind"]
    notes = []
    if s["behind"]:
        notes.append("the gateway fell behind real time; CPU judged per frame decoded")
    if s["saturated"]:
        notes.append("machine saturated: the figures are not clean")
    return f"{goal}: {'met' if met else 'missed'} — {pct:.2f}%, {s['frames_lost']} lost" + (
        f" ({'; '.join(notes)})" if notes else ""
    )


# --- where the gateway's extra CPU goes ---


def stage_costs(frames: int = STAGE_FRAMES, noise_dbfs: float = NOISE_DBFS) -> dict[str, float]:
    """CPU µs per 20 ms frame of each stage of the gateway's receive path, measured here in
    one thread on the senders' noise, with aiortc's own decoding (PyAV, 48 kHz stereo) for
    scale. Divide by 200 for % of a core per stream."""
    from media.audio import Chunker, MonoResampler  # deferred: see _run_server
    from media.endpointer import Endpointer
    from media.opus import OpusDecoder as LibopusDecoder
    from media.vad import SAMPLE_RATE, SileroModel

    packets = encode_noise(frames, noise_dbfs)
    theirs = OpusDecoder()
    ours = LibopusDecoder(SAMPLE_RATE, 1)  # straight to what the listener hears
    resampler = MonoResampler()
    # One stream, unbatched: the VadBatcher in the server shares calls across streams.
    stream = SileroModel().stream()
    chunker = Chunker()
    endpointer = Endpointer()
    decoded: list[av.AudioFrame] = []
    samples: list[npt.NDArray[np.float32]] = []

    def decode_aiortc() -> None:
        for i, data in enumerate(packets):
            theirs.decode(JitterFrame(data, i * FRAME_SAMPLES))

    def decode() -> None:  # as signalling.audio_receiver does it
        for data in packets:
            pcm = ours.decode(data)
            assert pcm is not None
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            decoded.append(frame)

    def detect() -> None:
        for piece in samples:
            for chunk in chunker.push(piece):
                endpointer.process(chunk, stream.probability(chunk))

    def per_frame(work: Callable[[], object]) -> float:
        cpu = time.process_time()
        work()
        return 1e6 * (time.process_time() - cpu) / frames

    return {
        "aiortc_opus_decode_us": per_frame(decode_aiortc),
        "opus_decode_16k_mono_us": per_frame(decode),
        "to_float_us": per_frame(lambda: samples.extend(resampler.resample(f) for f in decoded)),
        "silero_endpointer_us": per_frame(detect),
    }


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--streams",
        type=_levels,
        default=None,
        metavar="N,N,...",
        help=f"stream counts (default {_show(LEVELS)}; --quick: {_show(QUICK_LEVELS)})",
    )
    parser.add_argument(
        "--window",
        type=_seconds,
        default=None,
        metavar="S",
        help=f"measured seconds per run (default {WINDOW_S:.0f}; --quick: {QUICK_WINDOW_S:.0f})",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds between the last sender connecting and the window "
        f"(default {WARMUP_S:.0f}; --quick: {QUICK_WARMUP_S:.0f})",
    )
    parser.add_argument(
        "--clients-per-process",
        type=int,
        default=CLIENTS_PER_PROCESS,
        metavar="N",
        help="senders per worker process (default %(default)s)",
    )
    parser.add_argument(
        "--servers",
        "--server",
        dest="servers",
        type=_servers,
        default=SERVERS,
        metavar="KIND,...",
        help=f"which servers to measure, of {_show(SERVERS)} (default all; the ratio needs "
        "baseline; 'both' is baseline,gateway)",
    )
    parser.add_argument(
        "--noise-dbfs",
        type=float,
        default=NOISE_DBFS,
        metavar="DB",
        help="level of the noise the senders play, dB RMS below full scale (default "
        "%(default)s: a quiet room; -70: an idle microphone behind the browser's noise "
        "suppression, which the gateway does not show to Silero)",
    )


def run(args: argparse.Namespace) -> int:
    levels: tuple[int, ...] = args.streams or (QUICK_LEVELS if args.quick else LEVELS)
    if args.window is None:
        args.window = QUICK_WINDOW_S if args.quick else WINDOW_S
    if args.warmup is None:
        args.warmup = QUICK_WARMUP_S if args.quick else WARMUP_S
    kinds: tuple[ServerKind, ...] = args.servers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    recording = Recording("media")
    ctx = multiprocessing.get_context("spawn")
    top = max(levels)
    server_life = SERVER_START_TIMEOUT_S + len(kinds) * sum(
        run_budget(n, math.ceil(n / args.clients_per_process), args) for n in levels
    )

    # Before any server starts, so that our own processes do not compete with it.
    stages = stage_costs(noise_dbfs=args.noise_dbfs)
    rows: list[Row] = []
    start_s: dict[str, float] = {}
    print(f"starting {', '.join(kinds)} server(s)…", flush=True)
    with children([]) as made:
        servers: dict[ServerKind, tuple[Child, str]] = {}
        for kind in kinds:
            log = args.out / f"media-{kind}.log" if kind == "workers2" else None
            child, url, start_s[kind] = start_server(ctx, kind, top, server_life, args.verbose, log)
            made.append(child)
            servers[kind] = (child, url)
        for i, streams in enumerate(levels):
            # Alternate which server goes first, so that a drift in the machine's other
            # load does not always favour the same one.
            order = kinds if i % 2 == 0 else tuple(reversed(kinds))
            rows += run_level(ctx, servers, order, streams, args)
    rows.sort(key=lambda r: (r.streams, SERVERS.index(r.server)))
    summary = summarise(rows, cores)

    machine = recording.machine_after()
    out_path: Path = args.out / "media.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "streams": list(levels),
                "servers": list(kinds),
                "window_s": args.window,
                "warmup_s": args.warmup,
                "clients_per_process": args.clients_per_process,
                "frame_ms": 1000 * FRAME_S,
                "noise_dbfs": args.noise_dbfs,
                "opus": "aiortc OpusEncoder defaults, encoded once and replayed",
                "saturated_above": SATURATED,
                "target": {
                    "streams": TARGET_STREAMS,
                    "pct_core_per_stream": TARGET_PCT_PER_STREAM,
                    "frames_lost": 0,
                },
            },
            "server_start_s": start_s,
            "gateway_stage_us_per_frame": stages,
            "summary": summary,
            "verdict": verdict(summary),
            "workers_verdict": workers_verdict(summary),
        },
    )

    print()
    print(
        f"{cores} CPUs, {args.window:.0f} s windows after {args.warmup:.0f} s warm-up, "
        f"load average {machine['load_average'][0]:.2f} (the machine is shared)"
    )
    print(table(summary, cores))
    print(verdict(summary))
    if "workers2" in kinds:
        print(workers_verdict(summary))
    print(
        "gateway stages, CPU per 20 ms frame in one thread: "
        + ", ".join(f"{k.removesuffix('_us')} {v:.0f} µs" for k, v in stages.items())
        + f" (1 µs per frame = {1e-6 / FRAME_S * 100:.3f}% of a core per stream)"
    )
    for s in summary:
        if s["pct_core_by_process"]:
            print(
                f"- {s['server']} at {s['streams']}: % of a core by process: "
                + ", ".join(f"{n} {v:.1f}" for n, v in sorted(s["pct_core_by_process"].items()))
                + (f"; event loop: {s['loop_process']}'s" if s["loop_process"] else "")
                + "; sessions "
                + ", ".join(
                    f"{n} {w['sessions']:.0f} ({w['frames_lost']:.0f} lost)"
                    for n, w in (s["by_worker"] or {}).items()
                )
            )
        if s["sessions_ended"] is not None and round(s["sessions"]) < s["connected"]:
            ended = ", ".join(f"{n:.0f} {r}" for r, n in sorted(s["sessions_ended"].items()))
            print(
                f"- {s['server']} at {s['streams']}: {s['connected']} senders connected, "
                f"{s['sessions_at_start']:.0f} sessions at the window's start and "
                f"{s['sessions']:.0f} at its end (ended in it: {ended or 'none'})"
            )
        if s["utterances"]:
            print(
                f"- {s['server']} at {s['streams']} streams: endpointed {s['utterances']:.0f} "
                "utterance(s): the noise reached Silero's threshold and ASR ran"
            )
        if s["connect_errors"]:
            print(
                f"- {s['server']} at {s['streams']}: {len(s['connect_errors'])} sender(s) "
                f"failed to connect, e.g. {s['connect_errors'][0]}"
            )
        if s["behind"]:
            lag = "" if s["loop_lag_ms"] is None else f", loop lag {s['loop_lag_ms']:.0f} ms"
            print(
                f"- {s['server']} at {s['streams']}: behind real time (event loop "
                f"{fmt(_pct(s['loop_share_of_core']))}% of a core{lag}): unread packets wait "
                f"in its sockets ({fmt(s['udp_queued_kb'])} KB at the end), which overflow "
                "(UDP drops) and frames are lost"
            )
    print(f"\nwrote {out_path}")
    return 1 if any(r.error or r.connect_errors for r in rows) else 0


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _levels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,50; got {text!r}") from None
    if not values or not all(1 <= v <= 500 for v in values):
        raise argparse.ArgumentTypeError("each stream count must be between 1 and 500")
    return values


def _servers(text: str) -> tuple[ServerKind, ...]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "both" in names:  # what --server both meant before workers2
        names = (names - {"both"}) | {"baseline", "gateway"}
    unknown = names - set(SERVERS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected some of {_show(SERVERS)} (comma-separated); got {text!r}"
        )
    return tuple(k for k in SERVERS if k in names)


def _seconds(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be between 1 and 600 s, got {value}")
    return value


def _show(levels: Sequence[object]) -> str:
    return ",".join(map(str, levels))


BENCHMARK = Benchmark(
    name="media",
    help="server CPU per inbound audio stream and frames lost, gateway vs a plain aiortc loop",
    add_arguments=add_arguments,
    run=run,
)
