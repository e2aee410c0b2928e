"""Soak: the gateway serving several talking sessions for a long time, watched every minute
for anything that grows.

``python -m bench soak [--minutes N] [--sessions M] [--reconnect-every K]``
(``--quick``: 2 minutes, 4 sessions, reconnecting every 3 turns: the CI version)

The gateway runs as its own process (``python -m gateway serve``, no TLS, 127.0.0.1, tiny.en,
the gateway's defaults otherwise), so that its memory, file descriptors and threads are its
own, read from ``/proc/<pid>`` (Linux). Its language model is the Ollama-compatible test
server (``gateway.testing.ollama_server``) in this process, answering at a few words per
20 ms, as the real ``ollama`` client sees a small local model. Spoken replies are off: on
two cores, Piper for every reply would measure Piper.

M real aiortc clients (``LoopbackClient``), started a second apart, each play the
transcript benchmark's Piper sentences in turn, paced in real time, then wait for the
transcript and the whole streamed reply, then stay silent 2-5 s (seeded) before the next.
Every other session keeps one connection for the whole run; the rest end theirs (``DELETE
/sessions/<id>``) and connect again after every K turns, so that both long sessions and
session teardown are soaked.

Every minute: the gateway's RSS, as the lowest and highest of samples every 5 s (the low
one is what it keeps: a transcription's buffers come and go within seconds, and one reading
a minute lands anywhere on that saw-tooth, which alone made a 30-minute fit swing by tens of
MB/h), open fds, threads; asyncio tasks (``gateway_asyncio_tasks``);
event-loop lag p99 over that minute (from ``gateway_event_loop_delay_seconds``'s buckets);
end of speech → ``transcript.final`` p50/p95 (client clock) of the turns that ended in it;
turns and errors (error events, a missing final or reply, a lost connection). The slope of
each, per hour, is fitted over the minutes after the baseline window (the first 5).

The run fails itself (exit status 1) on:
- any error;
- tasks or fds left behind: the idle gateway after every session has ended against the
  idle gateway after one warm-up session, before the soak (a few of slack for keep-alive
  connections and timers caught mid-flight); threads likewise, with the slack of the
  thread pools that start workers on demand up to a cap and never retire them;
- runs of at least ``JUDGED_MINUTES``: low RSS slope ≥ 5 MB/h after the baseline window; fds,
  threads or tasks in the last minute above the most the baseline window saw; p95 latency
  of the last 5 minutes more than 10 % above the first 5 minutes'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientSession, ClientTimeout, TCPConnector
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Benchmark, Recording, fmt, markdown_table, percentile, write_json
from bench.transcript import (
    BenchError,
    Sentence,
    _hear,
    bounded,
    connect,
    end_session,
    prepare_sentences,
)
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama

logger = logging.getLogger(__name__)

BASELINE_MINUTES = 5
JUDGED_MINUTES = 15  # shorter runs report slopes but judge only what is left behind
RSS_SLOPE_LIMIT_MB_H = 5.0
P95_DRIFT_LIMIT = 0.10
TASK_SLACK = 3  # a keep-alive connection's handler, a timer caught mid-flight
FD_SLACK = 3
THREAD_SLACK = 8  # asyncio's default executor grows to min(32, cores + 4) and stays
GAP_S = (2.0, 5.0)  # silence between a reply and the next sentence
SEED = 11
READY_TIMEOUT_S = 180.0  # model loads, Smart Turn, first import of torch
REPLY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 45.0  # every session gone from the gateway after the clients left
SETTLE_S = 3.0  # after the last session ended, before the idle sample
STOP_TIMEOUT_S = 20.0  # SIGTERM to exit
SAMPLE_S = 5.0  # how often the gateway's memory is read within a minute
RECONNECT_PAUSE_S = 2.0
TOKEN_INTERVAL_S = 0.02


# --- what is measured (pure) ---


@dataclass(frozen=True)
class ProcessSample:
    rss_mb: float
    fds: int
    threads: int


@dataclass(frozen=True)
class MetricsSample:
    tasks: float
    sessions: float
    loop_lag: dict[float, float]  # cumulative bucket counts, upper bound → count


@dataclass(frozen=True)
class Turn:
    session: int
    ended_at: float  # monotonic
    latency_ms: float | None  # end of speech → final; None: none came
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Minute:
    minute: int
    rss_mb: float  # the lowest sample: what the gateway keeps
    rss_peak_mb: float  # the highest: what a turn's buffers add for a moment
    fds: int
    threads: int
    tasks: float
    loop_lag_p99_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    turns: int
    errors: int


def parse_proc_status(text: str) -> tuple[float, int]:
    """``/proc/<pid>/status`` → (VmRSS in MB, Threads)."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    rss_kb = float(fields["VmRSS"].split()[0])
    return rss_kb / 1024, int(fields["Threads"])


def read_process(pid: int) -> ProcessSample:
    rss_mb, threads = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    return ProcessSample(rss_mb, len(os.listdir(f"/proc/{pid}/fd")), threads)


def parse_metrics(text: str) -> MetricsSample:
    tasks = sessions = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_asyncio_tasks":
                tasks = sample.value
            elif sample.name == "gateway_sessions_active":
                sessions = sample.value
            elif sample.name == "gateway_event_loop_delay_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return MetricsSample(tasks, sessions, buckets)


def bucket_quantile(
    before: Mapping[float, float], after: Mapping[float, float], q: float
) -> float | None:
    """The ``q`` quantile of what a cumulative histogram counted between two reads, by
    linear interpolation inside the bucket, as Prometheus's ``histogram_quantile``; None
    when it counted nothing. Past the last finite bucket, that bucket's bound."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def slope_per_hour(values: Sequence[float | None]) -> float | None:
    """Least-squares slope of one value per minute, in units per hour; None with fewer
    than two values."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 60)


def window_p95(turns: Sequence[Turn], start: float, end: float) -> float | None:
    return percentile(
        [t.latency_ms for t in turns if start <= t.ended_at < end and t.latency_ms is not None],
        95,
    )


SERIES = ("rss_mb", "fds", "threads", "tasks", "loop_lag_p99_ms", "latency_p95_ms")


def slopes(minutes: Sequence[Minute]) -> dict[str, float | None]:
    judged = minutes[BASELINE_MINUTES:] if len(minutes) > BASELINE_MINUTES + 1 else minutes
    return {name: slope_per_hour([getattr(m, name) for m in judged]) for name in SERIES}


@dataclass(frozen=True)
class Verdict:
    check: str
    ok: bool
    detail: str


def judge(
    minutes: Sequence[Minute],
    idle_before: tuple[ProcessSample, MetricsSample],
    idle_after: tuple[ProcessSample, MetricsSample] | None,
    turns: Sequence[Turn],
    started: float,
) -> list[Verdict]:
    verdicts: list[Verdict] = []
    errors = sum(len(t.errors) for t in turns)
    verdicts.append(Verdict("errors", errors == 0, f"{errors} in {len(turns)} turns"))
    if not turns:
        verdicts.append(Verdict("turns", False, "no turn completed"))
    if idle_after is None:
        verdicts.append(Verdict("sessions ended", False, "sessions were still open at the end"))
    else:
        (p0, m0), (p1, m1) = idle_before, idle_after
        for name, before, after, slack in (
            ("tasks left", m0.tasks, m1.tasks, TASK_SLACK),
            ("fds left", p0.fds, p1.fds, FD_SLACK),
            ("threads left", p0.threads, p1.threads, THREAD_SLACK),
        ):
            verdicts.append(
                Verdict(name, after - before <= slack, f"{before:g} idle before, {after:g} after")
            )
    if len(minutes) < JUDGED_MINUTES:
        return verdicts
    rss = slopes(minutes)["rss_mb"]
    verdicts.append(
        Verdict(
            "RSS slope",
            rss is not None and rss < RSS_SLOPE_LIMIT_MB_H,
            f"{fmt(rss, 1)} MB/h after minute {BASELINE_MINUTES} (limit {RSS_SLOPE_LIMIT_MB_H})",
        )
    )
    baseline, last = minutes[:BASELINE_MINUTES], minutes[-1]
    for name in ("fds", "threads", "tasks"):
        most = max(getattr(m, name) for m in baseline)
        now = getattr(last, name)
        verdicts.append(
            Verdict(
                f"{name} growth",
                now <= most,
                f"{now:g} in the last minute, at most {most:g} in the first {BASELINE_MINUTES}",
            )
        )
    window = 60.0 * BASELINE_MINUTES
    first = window_p95(turns, started, started + window)
    end = started + 60.0 * len(minutes)
    recent = window_p95(turns, end - window, end)
    drift = None if first is None or recent is None else recent / first - 1
    verdicts.append(
        Verdict(
            "p95 drift",
            drift is not None and drift < P95_DRIFT_LIMIT,
            f"first {BASELINE_MINUTES} min {fmt(first)} ms, last {fmt(recent)} ms "
            f"({fmt(None if drift is None else 100 * drift, 1, ' %')})",
        )
    )
    return verdicts


def minute_row(
    minute: int,
    samples: Sequence[ProcessSample],
    metrics: MetricsSample,
    previous_lag: Mapping[float, float],
    turns: Sequence[Turn],
) -> Minute:
    """One minute's figures: memory from ``samples`` taken through it (lowest and highest),
    fds and threads from the last, the rest from ``/metrics`` and the turns that ended."""
    latency = [t.latency_ms for t in turns if t.latency_ms is not None]
    lag = bucket_quantile(previous_lag, metrics.loop_lag, 0.99)
    process = samples[-1]
    return Minute(
        minute=minute,
        rss_mb=round(min(p.rss_mb for p in samples), 1),
        rss_peak_mb=round(max(p.rss_mb for p in samples), 1),
        fds=process.fds,
        threads=process.threads,
        tasks=metrics.tasks,
        loop_lag_p99_ms=None if lag is None else 1000 * lag,
        latency_p50_ms=percentile(latency, 50),
        latency_p95_ms=percentile(latency, 95),
        turns=len(turns),
        errors=sum(len(t.errors) for t in turns),
    )


# --- the gateway process ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def gateway_process(
    ollama_url: str,
    sessions: int,
    log_path: Path,
    *,
    port: int | None = None,
    cert_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[tuple[asyncio.subprocess.Process, ClientSession]]:
    """``python -m gateway serve`` on a loopback port (``port``, or a free one), ready →
    (process, HTTP client); on exit SIGTERM, then SIGKILL if it has not left in
    ``STOP_TIMEOUT_S``. Plain HTTP, or HTTPS with the certificates in ``cert_dir`` (which
    the client trusts by their ``rootCA.pem``). ``extra_args``: more ``serve`` flags, after
    (so beating) these."""
    port = port or free_port()
    tls = ["--cert-dir", str(cert_dir)] if cert_dir is not None else ["--no-tls"]
    args = [
        sys.executable, "-m", "gateway", "serve",
        *tls, "--host", "127.0.0.1", "--port", str(port),
        "--ollama-host", ollama_url,
        "--tts-engine", "none",
        "--max-sessions", str(sessions + 2),
        "--sessions-per-client", str(sessions + 2),
        "--offer-rate", "1000",
        "--log-level", "warning",
        "--workers", "1",  # one process, measured as a whole; extra_args may say otherwise
        "--admission", "off",  # load is the point: nothing refused for its cost
        *extra_args,
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log)
    try:
        timeout = ClientTimeout(total=30)
        scheme, connector = "http", None
        if cert_dir is not None:
            trust = ssl.create_default_context(cafile=cert_dir / "rootCA.pem")
            scheme, connector = "https", TCPConnector(ssl=trust)
        base = f"{scheme}://127.0.0.1:{port}"
        async with ClientSession(base, timeout=timeout, connector=connector) as http:
            await _until_ready(proc, http, log_path)
            yield proc, http
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning("the gateway did not stop on SIGTERM; killing it")
                proc.kill()
                await proc.wait()


async def _until_ready(
    proc: asyncio.subprocess.Process, http: ClientSession, log_path: Path
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise BenchError(f"the gateway exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(OSError):
            async with http.get("/ready") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.5)
    raise BenchError(f"the gateway was not ready in {READY_TIMEOUT_S:.0f} s; see {log_path}")


async def read_metrics(http: ClientSession) -> MetricsSample:
    async with http.get("/metrics") as response:
        if response.status != 200:
            raise BenchError(f"GET /metrics: {response.status}")
        return parse_metrics(await response.text())


async def sample_until(pid: int, until: float) -> list[ProcessSample]:
    """The gateway's memory, fds and threads every ``SAMPLE_S`` until ``until``."""
    samples = [read_process(pid)]
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(SAMPLE_S, left))
        samples.append(read_process(pid))
    return samples


async def idle_sample(pid: int, http: ClientSession) -> tuple[ProcessSample, MetricsSample] | None:
    """The gateway once it holds no session and has settled; None if sessions stay open."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while (await read_metrics(http)).sessions > 0:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.5)
    await asyncio.sleep(SETTLE_S)  # the task gauge is sampled every 0.5 s
    return read_process(pid), await read_metrics(http)


# --- the speakers ---


def reply_outcome(events: Sequence[tuple[float, dict[str, Any]]]) -> str | None:
    """How the first reply among ``events`` ended: "" when it was done, an error message
    when it failed, None while it has not ended."""
    for _, event in events:
        kind = event.get("type")
        if kind == "reply.done":
            return ""
        if kind == "reply.cancelled":
            return f"reply cancelled: {event.get('reason')}"
        if kind == "error":
            return f"{event.get('code')}: {event.get('message')}"
    return None


async def _await_reply(client: LoopbackClient, since: int) -> str | None:
    """Wait for the reply to the turn whose events start at ``client.received[since]``
    (some arrive while the sentence's trailing silence plays); an error message, or None
    when it was done."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while (outcome := reply_outcome(client.received[since:])) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no reply within {REPLY_TIMEOUT_S:.0f} s"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.events.get(), left)  # a wake-up; read above
    return outcome or None


@dataclass
class Speaker:
    index: int
    http: ClientSession
    sentences: Sequence[Sentence]
    reconnect_every: int  # 0: one connection for the whole run
    turns: list[Turn] = field(default_factory=list)
    connections: int = 0

    async def run(self, stop_at: float) -> None:
        rng = random.Random(SEED + self.index)
        await asyncio.sleep(self.index * 1.0)  # staggered, as people are
        spoken = 0
        while time.monotonic() < stop_at:
            client = LoopbackClient()
            try:
                session_id = await connect(self.http, client)
            except Exception as exc:
                self._failed(f"connect: {type(exc).__name__}: {exc}")
                await bounded("closing a client", client.close())
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            self.connections += 1
            try:
                while time.monotonic() < stop_at:
                    await self._turn(client, self.sentences[spoken % len(self.sentences)])
                    spoken += 1
                    if client.pc.connectionState != "connected":
                        self._failed(f"connection {client.pc.connectionState}")
                        break
                    if self.reconnect_every and spoken % self.reconnect_every == 0:
                        break
                    await asyncio.sleep(rng.uniform(*GAP_S))
                await bounded("DELETE /sessions", end_session(self.http, session_id))
            finally:
                await bounded("closing a client", client.close())

    async def _turn(self, client: LoopbackClient, sentence: Sentence) -> None:
        since = len(client.received)
        heard = await _hear(client, sentence)
        errors = list(heard.errors)
        if heard.latency_ms is None:
            errors.append("no transcript.final")
        else:
            problem = await _await_reply(client, since)
            if problem is not None:
                errors.append(problem)
        self.turns.append(Turn(self.index, time.monotonic(), heard.latency_ms, tuple(errors)))
        for error in errors:
            logger.warning("session %d: %s", self.index, error)

    def _failed(self, error: str) -> None:
        logger.warning("session %d: %s", self.index, error)
        self.turns.append(Turn(self.index, time.monotonic(), None, (error,)))


# --- the run ---


@dataclass
class SoakResult:
    minutes: list[Minute]
    turns: list[Turn]
    idle_before: tuple[ProcessSample, MetricsSample]
    idle_after: tuple[ProcessSample, MetricsSample] | None
    started: float
    connections: int


async def soak(
    args: argparse.Namespace, warmup: Sentence, sentences: Sequence[Sentence]
) -> SoakResult:
    state = FakeOllama(token_interval_s=TOKEN_INTERVAL_S)
    async with (
        fake_ollama(state=state) as (_, ollama_url),
        gateway_process(ollama_url, args.sessions, args.out / "soak-gateway.log") as (proc, http),
    ):
        # One session first, so that lazy set-up (ASR threads, Opus, SCTP) is in the baseline.
        warm = Speaker(-1, http, [warmup], reconnect_every=1)
        await warm.run(time.monotonic() + 1.0)
        if any(t.errors for t in warm.turns):
            raise BenchError(f"the warm-up turn failed: {warm.turns}")
        pid = proc.pid
        before = await idle_sample(pid, http)
        if before is None:
            raise BenchError("the warm-up session did not end")

        speakers = [
            Speaker(i, http, [*sentences[i:], *sentences[:i]], args.reconnect_every * (i % 2))
            for i in range(args.sessions)
        ]
        started = time.monotonic()
        stop_at = started + 60.0 * args.minutes
        minutes: list[Minute] = []
        async with asyncio.TaskGroup() as group:
            for speaker in speakers:
                group.create_task(speaker.run(stop_at), name=f"speaker-{speaker.index}")
            lag = before[1].loop_lag
            for minute in range(1, math.ceil(args.minutes) + 1):
                samples = await sample_until(pid, started + 60.0 * minute)
                metrics = await read_metrics(http)
                turns = [
                    t
                    for s in speakers
                    for t in s.turns
                    if started + 60.0 * (minute - 1) <= t.ended_at < started + 60.0 * minute
                ]
                row = minute_row(minute, samples, metrics, lag, turns)
                lag = metrics.loop_lag
                minutes.append(row)
                print(_progress(row), flush=True)
        after = await idle_sample(pid, http)
    all_turns = sorted((t for s in speakers for t in s.turns), key=lambda t: t.ended_at)
    return SoakResult(
        minutes, all_turns, before, after, started, sum(s.connections for s in speakers)
    )


def _progress(row: Minute) -> str:
    return (
        f"minute {row.minute}: RSS {row.rss_mb:.1f} (peak {row.rss_peak_mb:.1f}) MB, "
        f"{row.fds} fds, {row.threads} threads, "
        f"{row.tasks:g} tasks, loop lag p99 {fmt(row.loop_lag_p99_ms, 1)} ms, "
        f"EoS→final p50 {fmt(row.latency_p50_ms)} / p95 {fmt(row.latency_p95_ms)} ms, "
        f"{row.turns} turns, {row.errors} errors"
    )


def minutes_table(minutes: Sequence[Minute]) -> str:
    header = (
        "minute", "RSS MB (low)", "peak", "fds", "threads", "tasks", "loop lag p99",
        "EoS→final p50", "p95", "turns", "errors",
    )  # fmt: skip
    rows = [
        [
            str(m.minute),
            f"{m.rss_mb:.1f}",
            f"{m.rss_peak_mb:.1f}",
            str(m.fds),
            str(m.threads),
            f"{m.tasks:g}",
            fmt(m.loop_lag_p99_ms, 1, " ms"),
            fmt(m.latency_p50_ms, suffix=" ms"),
            fmt(m.latency_p95_ms, suffix=" ms"),
            str(m.turns),
            str(m.errors),
        ]
        for m in minutes
    ]
    return markdown_table(header, rows)


def slopes_table(values: Mapping[str, float | None], judged_from: int) -> str:
    units = {
        "rss_mb": "MB/h", "fds": "fds/h", "threads": "threads/h", "tasks": "tasks/h",
        "loop_lag_p99_ms": "ms/h", "latency_p95_ms": "ms/h",
    }  # fmt: skip
    rows = [[name, f"{fmt(value, 2)} {units[name]}"] for name, value in values.items()]
    return f"slopes per hour, from minute {judged_from + 1}:\n" + markdown_table(
        ("series", "slope"), rows
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="how long to soak (default %(default)s)"
    )
    parser.add_argument(
        "--sessions", type=int, default=8, help="talking sessions at once (default %(default)s)"
    )
    parser.add_argument(
        "--reconnect-every",
        type=int,
        default=10,
        metavar="K",
        help="every other session reconnects after K turns (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.minutes, args.sessions, args.reconnect_every = 2.0, 4, 3
    if args.minutes <= 0 or args.sessions < 1 or args.reconnect_every < 1:
        raise BenchError("--minutes, --sessions and --reconnect-every must be positive")
    if not Path("/proc/self/status").exists():
        raise BenchError("the soak reads the gateway's /proc/<pid>: Linux only")
    recording = Recording("soak")
    warmup, sentences = prepare_sentences(quick=False)
    print(
        f"soaking {args.sessions} sessions for {args.minutes:g} min "
        f"(every other one reconnects after {args.reconnect_every} turns)…",
        flush=True,
    )
    result = asyncio.run(soak(args, warmup, sentences))
    verdicts = judge(
        result.minutes, result.idle_before, result.idle_after, result.turns, result.started
    )
    fitted = slopes(result.minutes)
    judged_from = BASELINE_MINUTES if len(result.minutes) > BASELINE_MINUTES + 1 else 0
    latency = [t.latency_ms for t in result.turns if t.latency_ms is not None]

    machine = recording.machine_after()
    out_path: Path = args.out / "soak.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "minutes": args.minutes,
                "sessions": args.sessions,
                "reconnect_every": args.reconnect_every,
                "gap_s": GAP_S,
                "baseline_minutes": BASELINE_MINUTES,
                "judged_minutes": JUDGED_MINUTES,
                "seed": SEED,
            },
            "idle_before": _idle(result.idle_before),
            "idle_after": None if result.idle_after is None else _idle(result.idle_after),
            "minutes": [asdict(m) for m in result.minutes],
            "slopes_per_hour": fitted,
            "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
            "turns": len(result.turns),
            "connections": result.connections,
            "errors": [e for t in result.turns for e in t.errors],
            "verdicts": [asdict(v) for v in verdicts],
        },
    )
    print()
    print(
        f"{args.sessions} sessions, {args.minutes:g} min, {len(result.turns)} turns, "
        f"{result.connections} connections; {machine['cpus_usable']} CPUs, "
        f"load average {machine['load_average'][0]:.2f}"
    )
    print(minutes_table(result.minutes))
    print()
    print(slopes_table(fitted, judged_from))
    print()
    for v in verdicts:
        print(f"- {'ok  ' if v.ok else 'FAIL'} {v.check}: {v.detail}")
    if len(result.minutes) < JUDGED_MINUTES:
        print(f"- (slopes and drift are judged from {JUDGED_MINUTES} minutes)")
    print(f"\nwrote {out_path}")
    return 0 if all(v.ok for v in verdicts) else 1


def _idle(sample: tuple[ProcessSample, MetricsSample]) -> dict[str, Any]:
    process, metrics = sample
    return {**asdict(process), "tasks": metrics.tasks}


BENCHMARK = Benchmark(
    name="soak",
    help="M talking sessions for N minutes: RSS, fds, threads, tasks, loop lag, latency, "
    "errors per minute; fails on growth",
    add_arguments=add_arguments,
    run=run,
)
