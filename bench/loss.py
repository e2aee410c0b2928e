"""Packet loss: what reaches the recogniser, and what it makes of it, when the client's
link drops RTP packets.

``python -m bench loss [--quick] [--engine E]`` (``--quick``: 8 sentences instead of 20)

This kernel has no netem, so the loss is made inside the client: a real aiortc client
(``gateway.testing.loopback.LoopbackClient``) drops its own outgoing microphone RTP packets
after numbering them (``LossPattern``), at random (0, 2, 5, 10, 20 %) or in bursts of 3-5
packets (5 %), seeded so that both receivers of a level see the same pattern. It sends the
transcript benchmark's Piper sentences as a browser encodes a microphone (mono Opus, 32 kb/s,
in-band FEC, the encoder told to expect the level's loss: ``BrowserOpusTrack``), paced in
real time, each followed by 1.5 s of silence, after a warm-up sentence not counted.

Two receivers per level, one after the other, each on its own gateway app (no LLM: replies
fail at once) with the same preloaded tiny.en:

- ``aiortc``: the gateway with aiortc's own receive path (the adapter not applied): a plain
  aiortc receiver whose track the listener reads, as before this change;
- ``gateway``: with ``signalling.audio_receiver`` (lost frames rebuilt from FEC or concealed).

Per level and receiver: packets the client sent and dropped; frames that reached the
listener decoded from a packet (``gateway_audio_frames_received`` less the concealed and
rebuilt ones) and, against the frames sent, the share missing before concealment; frames
rebuilt from FEC and concealed; the corpus WER of the joined ``transcript.final`` texts
(Whisper's normaliser); end of speech → final (client clock) p50/p95; sentences with no
final; whether the WebRTC session held (still connected, data channel open, at the end).
Frame counts are differences of ``/metrics`` and of the client's counters taken together
after the warm-up and after the last sentence; the frames in flight at each end (4, or up to
15 once aiortc's buffer has backed up) blur them by that much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

from aiohttp import ClientSession
from aiortc import RTCPeerConnection
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Benchmark, Recording, fmt, markdown_table, mean, percentile, write_json
from bench.transcript import (
    MODEL,
    BenchError,
    Heard,
    Normaliser,
    Sentence,
    _hear,
    _no_llm,
    _quiet_llm,
    bounded,
    connect,
    end_session,
    engine_name,
    english_normaliser,
    prepare_sentences,
    score,
    served,
)
from gateway.http import webrtc
from gateway.ops.config import ASR_ENGINES, AsrEngineName, Config
from gateway.testing.loopback import LoopbackClient, LossPattern
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from signalling.audio_receiver import ReceiverObserver

logger = logging.getLogger(__name__)

Receiver = Literal["aiortc", "gateway"]
RECEIVERS: tuple[Receiver, ...] = ("aiortc", "gateway")
SEED = 7

COUNTERS = {
    "received": "gateway_audio_frames_received",
    "lost": "gateway_audio_frames_lost",
    "concealed": "gateway_audio_frames_concealed",
    "recovered": "gateway_audio_frames_recovered",
    "late": "gateway_audio_packets_late",
}


@dataclass(frozen=True)
class Level:
    name: str
    rate: float
    burst: tuple[int, int] | None = None

    def pattern(self) -> LossPattern:
        return LossPattern(self.rate, burst=self.burst, seed=SEED)


LEVELS: tuple[Level, ...] = (
    Level("0 %", 0.0),
    Level("2 %", 0.02),
    Level("5 %", 0.05),
    Level("10 %", 0.10),
    Level("20 %", 0.20),
    Level("5 % bursts 3-5", 0.05, (3, 5)),
)


@dataclass
class Run:
    level: str
    receiver: Receiver
    heard: list[Heard] = field(default_factory=list)
    sent: int = 0  # microphone packets, after the warm-up
    dropped: int = 0
    counters: dict[str, float] = field(default_factory=dict)  # /metrics, after the warm-up
    held: bool = False
    error: str | None = None


# --- one receiver at one level ---


def _aiortc_path(pc: RTCPeerConnection, observer: ReceiverObserver | None = None) -> None:
    """In place of ``adapt_audio_receivers``: aiortc's receive path, as before."""


async def read_counters(http: ClientSession) -> dict[str, float]:
    async with http.get("/metrics") as response:
        if response.status != 200:
            raise BenchError(f"GET /metrics: {response.status}")
        text = await response.text()
    values = dict.fromkeys(COUNTERS, 0.0)
    names = {metric: key for key, metric in COUNTERS.items()}
    for family in text_string_to_metric_families(text):
        key = names.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if sample.name == family.name + "_total":
                values[key] += float(sample.value)
    return values


async def measure(
    config: Config,
    engine: ASREngine,
    level: Level,
    receiver: Receiver,
    warmup: Sentence,
    sentences: Sequence[Sentence],
) -> Run:
    run = Run(level.name, receiver)
    patch: contextlib.AbstractContextManager[object] = (
        mock.patch.object(webrtc, "adapt_audio_receivers", _aiortc_path)
        if receiver == "aiortc"
        else contextlib.nullcontext()
    )
    try:
        async with served(config, engine) as http:
            loss = level.pattern()
            client = LoopbackClient(loss=loss, browser_opus=True)
            try:
                with patch:
                    session_id = await connect(http, client)
                await _hear(client, warmup)
                before = await read_counters(http)
                sent, dropped = loss.sent, loss.dropped
                for i, sentence in enumerate(sentences, 1):
                    heard = await _hear(client, sentence)
                    run.heard.append(heard)
                    logger.info(
                        "%s, %s %d/%d: %s ms %r",
                        level.name,
                        receiver,
                        i,
                        len(sentences),
                        fmt(heard.latency_ms),
                        heard.text,
                    )
                after = await read_counters(http)
                run.sent, run.dropped = loss.sent - sent, loss.dropped - dropped
                run.counters = {key: after[key] - before[key] for key in COUNTERS}
                run.held = (
                    client.pc.connectionState == "connected" and client.channel.readyState == "open"
                )
                await bounded("DELETE /sessions", end_session(http, session_id))
            finally:
                await bounded("closing the client", client.close())
    except Exception as exc:
        logger.exception("%s, %s failed", level.name, receiver)
        run.error = f"{type(exc).__name__}: {exc}"
    return run


async def measure_quietly(
    name: AsrEngineName,
    engine: ASREngine,
    level: Level,
    receiver: Receiver,
    warmup: Sentence,
    sentences: Sequence[Sentence],
) -> Run:
    with _no_llm() as ollama_host, _quiet_llm("gateway.http.app", "gateway.conversation.dialogue"):
        config = Config(
            admission="off",
            no_tls=True,
            asr_engine=name,
            ollama_host=ollama_host,
            tts_engine="none",
        )
        return await measure(config, engine, level, receiver, warmup, sentences)


# --- figures ---


def summarise(run: Run, sentences: Sequence[Sentence], normalise: Normaliser) -> dict[str, Any]:
    scores = [
        score(sentence.text, heard.text, normalise)
        for sentence, heard in zip(sentences, run.heard, strict=False)
    ]
    words = sum(s["ref_words"] for s in scores)
    latency = [h.latency_ms for h in run.heard if h.latency_ms is not None]
    c = run.counters
    rebuilt = c.get("concealed", 0.0) + c.get("recovered", 0.0)
    decoded = c.get("received", 0.0) - rebuilt  # frames made from a packet that arrived
    return {
        "level": run.level,
        "receiver": run.receiver,
        "error": run.error,
        "sentences": len(run.heard),
        "packets_sent": run.sent,
        "packets_dropped": run.dropped,
        "dropped_pct": 100 * run.dropped / run.sent if run.sent else None,
        "frames_decoded": decoded,
        "frames_recovered": c.get("recovered"),
        "frames_concealed": c.get("concealed"),
        "frames_lost_metric": c.get("lost"),
        "packets_late": c.get("late"),
        # Frames the listener got from no packet, against those sent: before concealment.
        "missing_pct": 100 * (run.sent - decoded) / run.sent if run.sent else None,
        "wer_corpus": sum(s["word_errors"] for s in scores) / words if words else None,
        "wer_mean": mean([s["wer"] for s in scores]),
        "missed": sum(1 for h in run.heard if h.latency_ms is None),
        "latency_ms": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
        "held": run.held,
    }


def table(summaries: Sequence[dict[str, Any]]) -> str:
    header = (
        "loss",
        "receiver",
        "packets sent",
        "dropped",
        "frames decoded",
        "missing before concealment",
        "rebuilt (FEC)",
        "concealed (PLC)",
        "WER",
        "EoS→final p50",
        "p95",
        "no final",
        "session held",
    )
    rows = []
    for s in summaries:
        if s["error"] and not s["sentences"]:
            rows.append([s["level"], s["receiver"], "failed (below)"] + ["-"] * (len(header) - 3))
            continue
        rows.append(
            [
                s["level"],
                s["receiver"],
                str(s["packets_sent"]),
                f"{s['packets_dropped']} ({fmt(s['dropped_pct'], 1)} %)",
                fmt(s["frames_decoded"]),
                fmt(s["missing_pct"], 1, " %"),
                fmt(s["frames_recovered"]),
                fmt(s["frames_concealed"]),
                fmt(None if s["wer_corpus"] is None else 100 * s["wer_corpus"], 1, " %"),
                fmt(s["latency_ms"]["p50"], suffix=" ms"),
                fmt(s["latency_ms"]["p95"], suffix=" ms"),
                f"{s['missed']}/{s['sentences']}",
                "yes" if s["held"] else "no",
            ]
        )
    return markdown_table(header, rows)


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ASR_ENGINES,
        default="openai-whisper",
        help="the ASR engine (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    name = engine_name(args.engine)
    recording = Recording("loss")
    warmup, sentences = prepare_sentences(args.quick)
    normalise = english_normaliser()
    engine = load_engine(name, MODEL, "cpu")
    engine.transcribe(warmup.audio, None)  # the first call pays lazy set-up
    runs: list[Run] = []
    for level in LEVELS:
        for receiver in RECEIVERS:
            print(f"{level.name} loss, {receiver}: {len(sentences)} sentences…", flush=True)
            started = time.perf_counter()
            runs.append(
                asyncio.run(measure_quietly(name, engine, level, receiver, warmup, sentences))
            )
            logger.info("took %.0f s", time.perf_counter() - started)
    summaries = [summarise(r, sentences, normalise) for r in runs]

    machine = recording.machine_after()
    out_path: Path = args.out / "loss.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "engine": name,
                "model": MODEL,
                "levels": [asdict(level) for level in LEVELS],
                "seed": SEED,
                "sentences": len(sentences),
                "client": "aiortc, browser-like Opus: mono 32 kb/s VoIP, in-band FEC",
            },
            "summary": summaries,
            "runs": [asdict(r) for r in runs],
        },
    )
    print()
    print(
        f"{name} tiny.en, {len(sentences)} sentences per run, "
        f"{machine['cpus_usable']} CPUs, load average {machine['load_average'][0]:.2f}"
    )
    print(table(summaries))
    for r in runs:
        if r.error:
            print(f"- {r.level}, {r.receiver} failed: {r.error}")
    print(f"\nwrote {out_path}")
    return 1 if any(r.error for r in runs) else 0


BENCHMARK = Benchmark(
    name="loss",
    help="packet loss: frames delivered, WER and latency, aiortc's receive path vs the gateway's",
    add_arguments=add_arguments,
    run=run,
)
