"""End of speech → ``transcript.final``, measured by a real WebRTC client, per ASR engine.

For each engine the real gateway app is served on 127.0.0.1 with a preloaded tiny.en, and
one aiortc client (``gateway.testing.loopback.LoopbackClient``) plays Piper speech that no
test uses, paced in real time like a browser microphone, each sentence followed by silence.
The client records when the last audible sample left it and when ``transcript.final``
arrived; the difference is the latency a user feels. It includes however long the gateway
waits to know that the person has finished, by design.

Two configurations per engine, each on its own gateway, one after the other in the same
run: the baseline, today's behaviour (a fixed 500 ms silence ends every turn, no live
captions: ``turn_detection="fixed", vad_silence_ms=500, partial_interval_ms=0``), and the
measured one, the gateway's defaults (turn detection "auto", live captions on) unless
``--turn-detection`` and ``--vad-silence-ms`` say otherwise. Those two options change only
the measured configuration (``--vad-silence-ms`` is then the longest silence a turn waits
for, the gateway's own meaning); the baseline stays fixed at 500 ms, so that every run is
set against the same reference. ``--turn-detection fixed --vad-silence-ms 200`` measures a
fixed 200 ms silence (live captions stay at the gateway's default).

The offline transcription, interleaved with each streamed run: after each sentence's final,
the same engine object transcribes the same 16 kHz audio directly, with no network, codec
or endpointing. Word error rates of both show what the streamed path (Opus, resampling, VAD
cuts) costs in accuracy.

Honest timings: the gateway times the same wait itself, from the last voiced sample's
arrival to the transcript, in each final's ``timings["speech_end_to_final_ms"]`` (what the
built-in page shows) and in ``gateway_speech_end_to_final_seconds`` on ``/metrics``. Each
sentence's client latency is set against the gateway's figure from the same final, and the
histogram's mean over the measured sentences (``/metrics`` read after the warm-up and at
the end) against the client's mean; both should agree within ``HONEST_LIMIT_MS``, in each
configuration.

No language model takes part: the gateway is pointed at a port where nothing listens, so
each reply fails at once (``llm_unavailable``, ignored here) and never competes with ASR.

Client and gateway share this process and its event loop, as in the loopback tests; on a
busy machine the microphone may be paced late, which the end-of-speech timestamps follow,
since they are taken when the frame is produced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    mean,
    percentile,
    write_json,
)
from gateway.conversation.endofturn import TURN_DETECTIONS, TurnDetection
from gateway.http.app import build_app
from gateway.ops.config import ASR_ENGINES, AsrEngineName, Config
from gateway.testing.loopback import LoopbackClient, speech_end_offset
from media import Float32Array
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from media.asr.filters import clean_transcript
from scripts.make_test_speech import (
    SPEECH_PEAK,
    load_voice,
    scale_to_peak,
    synthesize,
    with_silence,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
MODEL = "tiny.en"
DEVICE = "cpu"

# What people say to an assistant, 4 to 14 words (the first 8, for --quick, span that
# range); none is in tests/data. Numbers are spelled out as a person says them; the WER
# normaliser maps "ten" and "10" alike.
SENTENCES: tuple[str, ...] = (
    "Can you set a timer for ten minutes?",
    "What time does the pharmacy close tonight?",
    "Add milk, eggs and bread to my shopping list.",
    "How far is it from London to Edinburgh?",
    "Play some relaxing music in the living room.",
    "Can you find me a recipe for dinner that uses chicken, rice and spinach?",
    "Pause the music, please.",
    "Send a message to Sarah saying I'm running late.",
    "How many tablespoons are there in a cup?",
    "Wake me up at seven tomorrow morning.",
    "Is it going to rain this weekend?",
    "Summarise the last email from my manager.",
    "Translate good morning into Spanish.",
    "Turn the thermostat down by two degrees.",
    "Who won the football match last night?",
    "What's on my calendar for tomorrow morning?",
    "Remind me to water the plants on Sunday.",
    "What is the capital city of Australia?",
    "Book a table for four people at the Italian restaurant on Friday evening, please.",
    "Explain how a rainbow forms in simple terms that a child could understand.",
)
QUICK_COUNT = 8
# Played first and not counted: the first utterance pays one-off costs (ONNX, Opus, SCTP).
WARMUP_TEXT = "Hello, can you hear me?"
TRAILING_SILENCE_S = 1.5

CONNECT_TIMEOUT_S = 15.0
# End of speech → final beyond this is a miss (tiny.en takes well under a second here).
FINAL_TIMEOUT_S = 15.0
# How late the microphone may run behind real time before the sentence is given up.
PLAYBACK_SLACK_S = 5.0
CLOSE_TIMEOUT_S = 30.0
# How often the wait looks at the microphone; arrival times come from the data channel
# callback, so this does not quantise the measurement.
POLL_S = 0.05
# The gateway's own end of speech → text (page and /metrics) should agree with the client's
# within this ("Hardening": honest timings).
HONEST_LIMIT_MS = 100.0
SPEECH_END_HISTOGRAM = "gateway_speech_end_to_final_seconds"
GATEWAY_LATENCY_KEY = "speech_end_to_final_ms"

Normaliser = Callable[[str], str]


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Sentence:
    text: str
    audio: Float32Array  # 16 kHz, 0.3 s lead and 0.2 s trail of silence, as tests/data

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class Heard:
    """What the client got back for one played sentence."""

    text: str
    latency_ms: float | None  # end of speech → last transcript.final; None: a miss
    timings: dict[str, float]  # the last final's own timings
    finals: int  # more than one: the VAD split the sentence
    utterances: int
    stray_events: int  # left over from the sentence before (a late final)
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Offline:
    text: str
    asr_ms: float
    # CPU time of this whole process during the call (the idle client and gateway add a few
    # per cent of a core). On a shared machine, wall time well above cpu_ms / cores means
    # other processes had the cores; cpu_ms itself grows too when spinning OpenMP threads
    # are descheduled.
    cpu_ms: float


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram's running totals, as ``/metrics`` showed them."""

    sum_s: float
    count: float

    def since(self, earlier: Histogram) -> Histogram:
        return Histogram(self.sum_s - earlier.sum_s, self.count - earlier.count)

    @property
    def mean_ms(self) -> float | None:
        return 1000 * self.sum_s / self.count if self.count else None


@dataclass(frozen=True)
class Configuration:
    """The turn settings a streamed run is made with (the rest are the gateway's)."""

    name: str
    turn_detection: TurnDetection
    vad_silence_ms: int
    partial_interval_ms: int | None = None  # None: the gateway's default

    def settings(self) -> dict[str, Any]:
        config = self.apply(Config())
        return {
            "turn_detection": config.turn_detection,
            "vad_silence_ms": config.vad_silence_ms,
            "partial_interval_ms": config.partial_interval_ms,
        }

    def apply(self, config: Config) -> Config:
        config = replace(
            config, turn_detection=self.turn_detection, vad_silence_ms=self.vad_silence_ms
        )
        if self.partial_interval_ms is not None:
            config = replace(config, partial_interval_ms=self.partial_interval_ms)
        return config


# Today's behaviour: every run's reference.
BASELINE = Configuration("fixed 500", "fixed", 500, partial_interval_ms=0)


def measured_configuration(turn_detection: TurnDetection, vad_silence_ms: int) -> Configuration:
    """What ``--turn-detection`` and ``--vad-silence-ms`` ask for; "default" when that is
    the gateway's own defaults."""
    defaults = Config()
    if (turn_detection, vad_silence_ms) == (defaults.turn_detection, defaults.vad_silence_ms):
        name = "default"
    else:
        name = f"{turn_detection} {vad_silence_ms}"
    return Configuration(name, turn_detection, vad_silence_ms)


@dataclass
class EngineRun:
    engine: str
    configuration: str = BASELINE.name
    load_s: float = 0.0
    connect_s: float = 0.0
    heard: list[Heard] = field(default_factory=list)
    offline: list[Offline] = field(default_factory=list)
    # gateway_speech_end_to_final_seconds after the warm-up and after the last sentence
    histogram_before: Histogram | None = None
    histogram_after: Histogram | None = None
    error: str | None = None


# --- speech ---


def make_sentences(texts: Sequence[str]) -> list[Sentence]:
    """Deterministic Piper speech, shaped exactly like the committed test clips."""
    voice = load_voice()
    return [
        Sentence(text, with_silence(scale_to_peak(synthesize(text, voice), SPEECH_PEAK)))
        for text in texts
    ]


# --- the streamed path ---


async def connect(http: ClientSession, client: LoopbackClient) -> str:
    sdp = await asyncio.wait_for(client.offer(), CONNECT_TIMEOUT_S)
    async with http.post("/offer", json={"sdp": sdp, "type": "offer"}) as response:
        if response.status != 200:
            raise BenchError(f"POST /offer: {response.status} {await response.text()}")
        answer: dict[str, Any] = await response.json()
    await client.accept(answer)
    await client.next_event("session.ready", within=CONNECT_TIMEOUT_S)
    return str(answer["session_id"])


def received_at(client: LoopbackClient, event: dict[str, Any]) -> float:
    """When the data channel delivered ``event`` (not when this coroutine got to it)."""
    for at, seen in reversed(client.received):
        if seen is event:
            return float(at)
    return time.monotonic()


def _is_transcript_event(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if kind == "error":
        return not str(event.get("code", "")).startswith("llm_")
    return kind in ("speech.started", "speech.stopped", "transcript.final")


async def _hear(client: LoopbackClient, sentence: Sentence) -> Heard:
    """Play one sentence and its trailing silence; wait for every utterance it caused."""
    stray = 0
    while not client.events.empty():
        # Reply events trail every final (the reply fails at once); anything else
        # left over belongs to the sentence before.
        stray += _is_transcript_event(client.events.get_nowait())
    mic = client.mic
    ends_before = len(mic.speech_ends)
    silence = np.zeros(round(TRAILING_SILENCE_S * SAMPLE_RATE), dtype=np.float32)
    mic.play(np.concatenate([sentence.audio, silence]))
    deadline = time.monotonic() + sentence.duration_s + TRAILING_SILENCE_S + PLAYBACK_SLACK_S

    speech_end: float | None = None
    begun: set[str] = set()
    ended: set[str] = set()
    finals: list[tuple[float, dict[str, Any]]] = []
    errors: list[str] = []
    while True:
        if speech_end is None and len(mic.speech_ends) > ends_before:
            speech_end = mic.speech_ends[ends_before]
            deadline = speech_end + FINAL_TIMEOUT_S
        answered = {str(event["utterance_id"]) for _, event in finals}
        # Done once the silence has played and every utterance has its final. One that ASR
        # found empty never gets a final, so it holds the wait to the deadline.
        if mic.idle and speech_end is not None and begun <= ended <= answered:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            event = await asyncio.wait_for(client.events.get(), min(POLL_S, left))
        except TimeoutError:
            continue
        kind = event.get("type")
        if kind == "speech.started":
            begun.add(str(event["utterance_id"]))
        elif kind == "speech.stopped":
            ended.add(str(event["utterance_id"]))
        elif kind == "transcript.final":
            finals.append((received_at(client, event), event))
        elif kind == "error" and _is_transcript_event(event):
            errors.append(f"{event.get('code')}: {event.get('message')}")

    if speech_end is None:
        errors.append("the microphone did not play the sentence in time")
    if speech_end is None or not finals:
        return Heard("", None, {}, len(finals), len(begun), stray, tuple(errors))
    last_at, last = finals[-1]
    return Heard(
        text=" ".join(str(event["text"]) for _, event in finals),
        latency_ms=1000 * (last_at - speech_end),
        timings={k: float(v) for k, v in last.get("timings", {}).items()},
        finals=len(finals),
        utterances=len(begun),
        stray_events=stray,
        errors=tuple(errors),
    )


async def read_histogram(http: ClientSession, name: str) -> Histogram:
    """``name``'s ``_sum`` and ``_count`` from the gateway's ``/metrics``."""
    async with http.get("/metrics") as response:
        if response.status != 200:
            raise BenchError(f"GET /metrics: {response.status} {await response.text()}")
        text = await response.text()
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(name)
            if suffix in totals:
                totals[suffix] += float(sample.value)
    return Histogram(totals["_sum"], totals["_count"])


async def end_session(http: ClientSession, session_id: str) -> None:
    async with http.delete(f"/sessions/{session_id}") as response:
        if response.status != 204:
            logger.warning("DELETE /sessions/%s: %s", session_id, response.status)


async def bounded(what: str, coro: Awaitable[object]) -> None:
    """Teardown that cannot hang the run; a failure is logged, not raised."""
    try:
        await asyncio.wait_for(coro, CLOSE_TIMEOUT_S)
    except Exception:
        logger.warning("%s did not finish cleanly", what, exc_info=True)


@contextlib.contextmanager
def _no_llm() -> Iterator[str]:
    """An Ollama URL that refuses at once: a port held bound but not listening, so nothing
    else can take it for the run."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class _DropLLMWarnings(logging.Filter):
    """The gateway warns, rightly, that Ollama is unreachable; here that is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or "Ollama" not in record.getMessage()


@contextlib.contextmanager
def _quiet_llm(*loggers: str) -> Iterator[None]:
    quiet = _DropLLMWarnings()
    for name in loggers:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in loggers:
            logging.getLogger(name).removeFilter(quiet)


async def stream_pass(
    name: AsrEngineName,
    engine: ASREngine,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    configuration: Configuration,
    run: EngineRun,
) -> None:
    with _no_llm() as ollama_host, _quiet_llm("gateway.http.app", "gateway.conversation.dialogue"):
        config = Config(
            admission="off",
            no_tls=True,
            asr_engine=name,
            ollama_host=ollama_host,
            tts_engine="none",  # transcripts only: no voice to load
        )
        await _serve_and_listen(configuration.apply(config), engine, warmup, sentences, run)


@contextlib.asynccontextmanager
async def served(config: Config, engine: ASREngine) -> AsyncIterator[ClientSession]:
    """The gateway, with ``engine`` preloaded, on a free port of 127.0.0.1, and an HTTP
    client for it; the gateway is closed after, however the block ends."""
    runner = web.AppRunner(build_app(config, engine=engine))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)  # a free port
        await site.start()
        port = runner.addresses[0][1]
        timeout = ClientTimeout(total=CONNECT_TIMEOUT_S)
        async with ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
            yield http
    finally:
        await bounded("closing the gateway", runner.cleanup())


async def _serve_and_listen(
    config: Config,
    engine: ASREngine,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    run: EngineRun,
) -> None:
    name = config.asr_engine
    async with served(config, engine) as http:
        client = LoopbackClient()
        try:
            started = time.perf_counter()
            session_id = await connect(http, client)
            run.connect_s = time.perf_counter() - started
            await _hear(client, warmup)
            # The warm-up's final is in the histogram too; only what follows is compared.
            run.histogram_before = await read_histogram(http, SPEECH_END_HISTOGRAM)
            for i, sentence in enumerate(sentences, 1):
                heard = await _hear(client, sentence)
                run.heard.append(heard)
                # The baseline runs here, between sentences, so that both see the same
                # load on a shared machine; the gateway's ASR is idle now and the next
                # sentence waits for it.
                offline = await asyncio.to_thread(transcribe_offline, engine, sentence)
                run.offline.append(offline)
                logger.info(
                    "%s %d/%d: %s ms %r; offline %.0f ms %r",
                    name,
                    i,
                    len(sentences),
                    fmt(heard.latency_ms),
                    heard.text,
                    offline.asr_ms,
                    offline.text,
                )
            run.histogram_after = await read_histogram(http, SPEECH_END_HISTOGRAM)
            await bounded("DELETE /sessions", end_session(http, session_id))
        finally:
            await bounded("closing the client", client.close())


# --- the offline baseline ---


def transcribe_offline(engine: ASREngine, sentence: Sentence) -> Offline:
    """Blocking: the engine called directly, as the gateway's ASR worker calls it."""
    cpu, started = time.process_time(), time.perf_counter()
    result = engine.transcribe(sentence.audio, None)
    asr_ms = 1000 * (time.perf_counter() - started)
    cpu_ms = 1000 * (time.process_time() - cpu)
    return Offline(clean_transcript(result), asr_ms, cpu_ms)


def run_engine(
    name: AsrEngineName,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    configurations: Sequence[Configuration],
) -> list[EngineRun]:
    """One streamed run per configuration, one after the other, with one loaded engine."""
    runs = [EngineRun(name, c.name) for c in configurations]
    try:
        started = time.perf_counter()
        engine = load_engine(name, MODEL, DEVICE)
        load_s = time.perf_counter() - started
        engine.transcribe(warmup.audio, None)  # the first call pays lazy set-up
    except Exception as exc:
        logger.exception("%s failed to load", name)
        for run in runs:
            run.error = f"{type(exc).__name__}: {exc}"
        return runs
    for configuration, run in zip(configurations, runs, strict=True):
        run.load_s = load_s
        print(f"  {name}, {configuration.name}…", flush=True)
        try:
            asyncio.run(stream_pass(name, engine, warmup, sentences, configuration, run))
        except Exception as exc:
            logger.exception("%s, %s failed", name, configuration.name)
            run.error = f"{type(exc).__name__}: {exc}"
    return runs


# --- scoring ---


def english_normaliser() -> Normaliser:
    """Whisper's own normaliser: case, punctuation, spelling and numbers ("six" = "6")."""
    from whisper.normalizers import EnglishTextNormalizer  # deferred: imports torch

    normalise: Normaliser = EnglishTextNormalizer()
    return normalise


def score(reference: str, hypothesis: str, normalise: Normaliser) -> dict[str, Any]:
    ref = normalise(reference)
    hyp = normalise(hypothesis)
    words = len(ref.split())
    if not hyp.split():
        return {"wer": 1.0, "word_errors": words, "ref_words": words}
    out = jiwer.process_words(ref, hyp)
    errors = out.substitutions + out.deletions + out.insertions
    return {"wer": errors / words, "word_errors": errors, "ref_words": words}


def records(
    run: EngineRun, sentences: Sequence[Sentence], normalise: Normaliser
) -> list[dict[str, Any]]:
    out = []
    for i, sentence in enumerate(sentences):
        record: dict[str, Any] = {
            "engine": run.engine,
            "configuration": run.configuration,
            "index": i,
            "reference": sentence.text,
            "audio_s": round(sentence.duration_s, 3),
            "speech_end_s": round(speech_end_offset(sentence.audio, SAMPLE_RATE), 3),
        }
        if i < len(run.heard):
            heard = run.heard[i]
            # The gateway's own end of speech → text, from the same final the client timed.
            gateway_ms = heard.timings.get(GATEWAY_LATENCY_KEY)
            record["streamed"] = {
                **asdict(heard),
                "missed": heard.latency_ms is None,
                # Client end of speech → the endpointer's decision, plus delivery back:
                # the jitter buffer, Silero's lag and the silence hangover.
                "to_endpoint_ms": (
                    heard.latency_ms - heard.timings["endpoint_to_final_ms"]
                    if heard.latency_ms is not None and "endpoint_to_final_ms" in heard.timings
                    else None
                ),
                "gateway_ms": gateway_ms,
                "client_minus_gateway_ms": (
                    round(heard.latency_ms - gateway_ms, 1)
                    if heard.latency_ms is not None and gateway_ms is not None
                    else None
                ),
                **score(sentence.text, heard.text, normalise),
            }
        if i < len(run.offline):
            offline = run.offline[i]
            record["offline"] = {
                **asdict(offline),
                "rtf": offline.asr_ms / 1000 / sentence.duration_s,
                **score(sentence.text, offline.text, normalise),
            }
        out.append(record)
    return out


def summarise(run: EngineRun, recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    streamed = [r["streamed"] for r in recs if "streamed" in r]
    offline = [r["offline"] for r in recs if "offline" in r]
    got = [s for s in streamed if not s["missed"]]

    def values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
        return [float(v) for r in rows if (v := r.get(key)) is not None]

    def timing(key: str) -> list[float]:
        return [float(s["timings"][key]) for s in got if key in s["timings"]]

    def corpus(rows: Sequence[dict[str, Any]]) -> float | None:
        words = sum(r["ref_words"] for r in rows)
        return sum(r["word_errors"] for r in rows) / words if words else None

    latency = values(got, "latency_ms")
    differences = values(got, "client_minus_gateway_ms")
    wer_streamed = mean(values(streamed, "wer"))
    wer_offline = mean(values(offline, "wer"))
    return {
        "engine": run.engine,
        "configuration": run.configuration,
        "error": run.error,
        "load_s": round(run.load_s, 2),
        "connect_s": round(run.connect_s, 2),
        "n": len(streamed),
        "missed": len(streamed) - len(got),
        "split": sum(1 for s in got if s["finals"] > 1),
        "latency_ms": {
            "p50": percentile(latency, 50),
            "p95": percentile(latency, 95),
            "mean": mean(latency),
            "min": min(latency, default=None),
            "max": max(latency, default=None),
        },
        "client_minus_gateway_ms": {
            "n": len(differences),
            "p50": percentile(differences, 50),
            "p95": percentile(differences, 95),
            "mean": mean(differences),
            "max_abs": max((abs(d) for d in differences), default=None),
        },
        "metrics": metrics_comparison(run, latency, values(got, "gateway_ms")),
        "to_endpoint_ms_p50": percentile(values(got, "to_endpoint_ms"), 50),
        "asr_ms_p50": percentile(timing("asr_ms"), 50),
        "endpoint_to_final_ms_p50": percentile(timing("endpoint_to_final_ms"), 50),
        "speech_ms_p50": percentile(timing("speech_ms"), 50),
        "wer_streamed_mean": wer_streamed,
        "wer_offline_mean": wer_offline,
        "wer_delta_points": (
            100 * (wer_streamed - wer_offline)
            if wer_streamed is not None and wer_offline is not None
            else None
        ),
        "wer_streamed_corpus": corpus(streamed),
        "wer_offline_corpus": corpus(offline),
        "offline_asr_ms_p50": percentile(values(offline, "asr_ms"), 50),
        "offline_cpu_ms_p50": percentile(values(offline, "cpu_ms"), 50),
        "offline_rtf_p50": percentile(values(offline, "rtf"), 50),
    }


def metrics_comparison(
    run: EngineRun, latency: Sequence[float], gateway: Sequence[float]
) -> dict[str, Any]:
    """The histogram's mean over the measured sentences against the client's mean. The
    histogram counts every final: a sentence the VAD split adds one per piece, while the
    client times only the last (``count`` shows it)."""
    if run.histogram_before is None or run.histogram_after is None:
        return {"count": None, "mean_ms": None, "client_mean_ms": mean(latency), "diff_ms": None}
    measured = run.histogram_after.since(run.histogram_before)
    client_mean = mean(latency)
    return {
        "count": measured.count,
        "mean_ms": measured.mean_ms,
        "client_mean_ms": client_mean,
        "client_n": len(latency),
        # The same finals' timings: equal to the histogram's mean unless a sentence split.
        "timings_mean_ms": mean(gateway),
        "diff_ms": (
            client_mean - measured.mean_ms
            if client_mean is not None and measured.mean_ms is not None
            else None
        ),
        "before": asdict(run.histogram_before),
        "after": asdict(run.histogram_after),
    }


def honest(summary: dict[str, Any]) -> bool | None:
    """Whether the page's and /metrics' end of speech → text agree with the client's."""
    worst = summary["client_minus_gateway_ms"]["max_abs"]
    diff = summary["metrics"]["diff_ms"]
    if worst is None or diff is None:
        return None
    return bool(worst <= HONEST_LIMIT_MS and abs(diff) <= HONEST_LIMIT_MS)


def against_baseline(summaries: Sequence[dict[str, Any]]) -> None:
    """Give each summary ``vs_baseline``: its figures minus the same engine's baseline's
    (None for the baseline itself)."""
    bases = {s["engine"]: s for s in summaries if s["configuration"] == BASELINE.name}
    for s in summaries:
        base = bases.get(s["engine"])
        if base is None or base is s:
            s["vs_baseline"] = None
            continue

        def diff(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
            return None if a is None or b is None else scale * (a - b)

        lat, base_lat = s["latency_ms"], base["latency_ms"]
        s["vs_baseline"] = {
            "p50_ms": diff(lat["p50"], base_lat["p50"]),
            "p95_ms": diff(lat["p95"], base_lat["p95"]),
            "mean_ms": diff(lat["mean"], base_lat["mean"]),
            "wer_streamed_points": diff(s["wer_streamed_mean"], base["wer_streamed_mean"], 100.0),
        }


def table(summaries: Sequence[dict[str, Any]]) -> str:
    header = (
        "engine",
        "configuration",
        "n",
        "missed",
        "split",
        "EoS→final p50",
        "p95",
        "mean",
        f"Δ p50 vs {BASELINE.name}",
        "Δ p95",
        "EoS→endpoint p50",
        "asr p50",
        "endpoint→final p50",
        "WER streamed",
        "WER offline",
        "Δ pts",
        f"WER Δ pts vs {BASELINE.name}",
        "offline asr p50",
        "offline CPU p50",
    )
    rows = []
    for s in summaries:
        if s["error"] and not s["n"]:
            rows.append(
                [s["engine"], s["configuration"], "-", "-", "-", "failed (below)"]
                + ["-"] * (len(header) - 6)
            )
            continue
        lat = s["latency_ms"]
        vs = s.get("vs_baseline") or {}
        rows.append(
            [
                s["engine"],
                s["configuration"],
                str(s["n"]),
                str(s["missed"]),
                str(s["split"]),
                fmt(lat["p50"], suffix=" ms"),
                fmt(lat["p95"], suffix=" ms"),
                fmt(lat["mean"], suffix=" ms"),
                _signed(vs.get("p50_ms")),
                _signed(vs.get("p95_ms")),
                fmt(s["to_endpoint_ms_p50"], suffix=" ms"),
                fmt(s["asr_ms_p50"], suffix=" ms"),
                fmt(s["endpoint_to_final_ms_p50"], suffix=" ms"),
                fmt(_pct(s["wer_streamed_mean"]), 1, "%"),
                fmt(_pct(s["wer_offline_mean"]), 1, "%"),
                fmt(s["wer_delta_points"], 1),
                _signed(vs.get("wer_streamed_points"), 1),
                fmt(s["offline_asr_ms_p50"], suffix=" ms"),
                fmt(s["offline_cpu_ms_p50"], suffix=" ms"),
            ]
        )
    return markdown_table(header, rows)


def honesty_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Client-measured end of speech → final against the gateway's own figures."""
    header = (
        "engine",
        "configuration",
        "n",
        "client - gateway p50",
        "p95",
        "max abs",
        "/metrics n",
        "/metrics mean",
        "client mean",
        "client - /metrics",
        f"within {HONEST_LIMIT_MS:.0f} ms",
    )
    rows = []
    for s in summaries:
        d, m = s["client_minus_gateway_ms"], s["metrics"]
        verdict = honest(s)
        rows.append(
            [
                s["engine"],
                s["configuration"],
                str(d["n"]),
                fmt(d["p50"], suffix=" ms"),
                fmt(d["p95"], suffix=" ms"),
                fmt(d["max_abs"], suffix=" ms"),
                fmt(m["count"]),
                fmt(m["mean_ms"], suffix=" ms"),
                fmt(m["client_mean_ms"], suffix=" ms"),
                fmt(m["diff_ms"], suffix=" ms"),
                "-" if verdict is None else ("yes" if verdict else "no"),
            ]
        )
    return markdown_table(header, rows)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _signed(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


# --- the subcommand ---


def add_engine_arguments(parser: argparse.ArgumentParser, default_engine: str) -> None:
    """``--engine`` and ``--vad-silence-ms``, shared by the benchmarks that stream speech."""
    parser.add_argument(
        "--engine",
        choices=(*ASR_ENGINES, "both"),
        default=default_engine,
        help="which ASR engine to measure (default %(default)s)",
    )
    add_vad_silence_argument(parser)


def add_vad_silence_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vad-silence-ms",
        type=silence_ms,
        default=Config().vad_silence_ms,
        metavar="MS",
        help="the gateway's VAD silence hangover (default %(default)s, the gateway's own)",
    )


def selected_engines(choice: str) -> tuple[AsrEngineName, ...]:
    return ASR_ENGINES if choice == "both" else (engine_name(choice),)


def prepare_sentences(quick: bool) -> tuple[Sentence, list[Sentence]]:
    """The warm-up sentence and the measured ones, synthesised."""
    texts = SENTENCES[:QUICK_COUNT] if quick else SENTENCES
    print(f"synthesising {len(texts)} sentences with Piper…", flush=True)
    warmup, *sentences = make_sentences((WARMUP_TEXT, *texts))
    return warmup, sentences


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, "both")
    parser.add_argument(
        "--turn-detection",
        choices=TURN_DETECTIONS,
        default=Config().turn_detection,
        help="the measured configuration's end of turn (default %(default)s, the gateway's "
        f"own); the baseline is always {BASELINE.name}",
    )


def turn_detection_name(text: str) -> TurnDetection:
    for name in TURN_DETECTIONS:
        if name == text:
            return name
    raise ValueError(f"unknown turn detection {text!r}")


def run(args: argparse.Namespace) -> int:
    engines = selected_engines(args.engine)
    recording = Recording("transcript")
    warmup, sentences = prepare_sentences(args.quick)
    normalise = english_normaliser()
    measured = measured_configuration(turn_detection_name(args.turn_detection), args.vad_silence_ms)
    configurations = (BASELINE, measured)

    runs, all_records, summaries = [], [], []
    for name in engines:
        print(
            f"{name}: streaming {len(sentences)} sentences over WebRTC, "
            f"{' and '.join(c.name for c in configurations)}…",
            flush=True,
        )
        for engine_run in run_engine(name, warmup, sentences, configurations):
            recs = records(engine_run, sentences, normalise)
            runs.append(engine_run)
            all_records += recs
            summaries.append(summarise(engine_run, recs))
    against_baseline(summaries)

    machine = recording.machine_after()
    out_path: Path = args.out / "transcript.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "engines": list(engines),
                "model": MODEL,
                "device": DEVICE,
                "configurations": {c.name: c.settings() for c in configurations},
                "sentences": len(sentences),
                "trailing_silence_s": TRAILING_SILENCE_S,
                "final_timeout_s": FINAL_TIMEOUT_S,
                "warmup": WARMUP_TEXT,
                "wer_normaliser": "whisper.normalizers.EnglishTextNormalizer",
            },
            "summary": summaries,
            "records": all_records,
        },
    )

    print()
    print(
        f"tiny.en on CPU, {len(sentences)} sentences, "
        f"{machine['cpus_usable']} CPUs, load average {machine['load_average'][0]:.2f}"
    )
    for c in configurations:
        settings = c.settings()
        interval = settings["partial_interval_ms"]
        captions = "auto (on a GPU only)" if interval is None else f"every {interval} ms (0: off)"
        print(
            f"- {c.name}: turn detection {settings['turn_detection']}, longest silence "
            f"{settings['vad_silence_ms']} ms, captions {captions}"
        )
    print(table(summaries))
    print()
    print("End of speech → final: the client's against the gateway's own (page and /metrics)")
    print(honesty_table(summaries))
    for engine_run in runs:
        diffs = [
            fmt(rec["streamed"]["client_minus_gateway_ms"])
            for rec in all_records
            if (rec["engine"], rec["configuration"])
            == (engine_run.engine, engine_run.configuration)
            and "streamed" in rec
        ]
        print(
            f"- {engine_run.engine}, {engine_run.configuration}: client - gateway per "
            f"sentence (ms): {', '.join(diffs)}"
        )
    for rec in all_records:
        streamed = rec.get("streamed", {})
        problems = "; ".join(streamed.get("errors", ()))
        where = f"{rec['engine']}, {rec['configuration']}"
        if streamed.get("missed"):
            print(
                f"- {where}: missed {rec['reference']!r} "
                f"({streamed['utterances']} utterance(s) heard, no transcript.final"
                f"{'; ' + problems if problems else ''})"
            )
        elif problems:
            print(f"- {where}: {rec['reference']!r}: {problems}")
    for engine_run in runs:
        if engine_run.error:
            print(f"- {engine_run.engine}, {engine_run.configuration} failed: {engine_run.error}")
    print(f"\nwrote {out_path}")
    return 1 if any(r.error for r in runs) else 0


def silence_ms(text: str) -> int:
    value = int(text)
    if not 100 <= value <= 5000:  # the gateway's own bounds for --vad-silence-ms
        raise argparse.ArgumentTypeError(f"must be between 100 and 5000, got {value}")
    return value


def engine_name(text: str) -> AsrEngineName:
    for name in ASR_ENGINES:
        if name == text:
            return name
    raise ValueError(f"unknown engine {text!r}")


BENCHMARK = Benchmark(
    name="transcript",
    help="end of speech → transcript.final over real WebRTC, and WER against offline ASR",
    add_arguments=add_arguments,
    run=run,
)
