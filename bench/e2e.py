"""End to end, at the client: end of speech → ``transcript.final`` → first ``reply.delta``.

The real gateway app is served on 127.0.0.1 with a preloaded tiny.en, and its
``ollama_host`` points at the Ollama-compatible test server (``gateway.testing.ollama_server``) with
a fixed time to first token (``--first-token-ms``, 200 ms by default) and a piece every
20 ms after it. So the language model's share is known exactly and everything else is the
gateway's and the transport's. One aiortc client (``gateway.testing.loopback.LoopbackClient``) plays
Piper speech (the transcript benchmark's sentences) in real time over WebRTC and waits for
each reply to finish before the next sentence, so that no reply is cancelled by barge-in.

Per turn, at the client: end of speech → final, end of speech → first delta, final → first
delta; from the gateway's own events: ``asr_ms``, ``llm_first_token_ms`` (the gateway's
request to Ollama → first piece) and ``endpoint_to_first_token_ms``. The gateway's
overhead is (final → first delta at the client) - ``llm_first_token_ms``: starting the reply
after the transcript and carrying its first piece to the client (target: under 20 ms).
``llm_first_token_ms`` - the fixed delay is the Ollama client and HTTP on loopback.

End of speech → final includes the VAD's silence hangover (500 ms by default) by design.
Client, gateway and test server share this process and its event loop, as in the loopback
tests; the machine's load is in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    mean,
    percentile,
    write_json,
)
from bench.transcript import (
    CONNECT_TIMEOUT_S,
    POLL_S,
    WARMUP_TEXT,
    Sentence,
    add_engine_arguments,
    bounded,
    connect,
    end_session,
    prepare_sentences,
    received_at,
    selected_engines,
)
from gateway.http.app import build_app
from gateway.ops.config import AsrEngineName, Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama
from media.asr.base import ASREngine
from media.asr.engines import load_engine

MODEL = "tiny.en"
DEVICE = "cpu"
QUICK_COUNT = 6
FIRST_TOKEN_MS = 200
TOKEN_INTERVAL_S = 0.02
OVERHEAD_TARGET_MS = 20.0
# How late the microphone may run behind real time before the sentence is given up.
PLAYBACK_SLACK_S = 5.0
# End of speech → the reply's end beyond this is a miss (tiny.en plus a short reply).
TURN_TIMEOUT_S = 20.0
# Silence between one reply's end and the next sentence, as a person pauses.
GAP_S = 0.3


@dataclass
class Turn:
    """What the client saw for one sentence (times in ms; None: it never came)."""

    text: str = ""
    eos_to_final_ms: float | None = None
    eos_to_first_delta_ms: float | None = None
    final_to_first_delta_ms: float | None = None
    eos_to_done_ms: float | None = None
    final_timings: dict[str, float] = field(default_factory=dict)
    reply_timings: dict[str, float] = field(default_factory=dict)
    finals: int = 0  # more than one: the VAD split the sentence
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def overhead_ms(self) -> float | None:
        first_token = self.reply_timings.get("llm_first_token_ms")
        if self.final_to_first_delta_ms is None or first_token is None:
            return None
        return self.final_to_first_delta_ms - first_token


@dataclass
class EngineRun:
    engine: str
    load_s: float = 0.0
    connect_s: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None


async def _turn(client: LoopbackClient, sentence: Sentence) -> Turn:
    """Play one sentence; wait until every utterance it caused has been answered."""
    while not client.events.empty():
        client.events.get_nowait()  # anything left belongs to the turn before
    mic = client.mic
    ends_before = len(mic.speech_ends)
    mic.play(sentence.audio)
    deadline = time.monotonic() + sentence.duration_s + PLAYBACK_SLACK_S

    turn = Turn()
    speech_end: float | None = None
    begun: set[str] = set()
    ended: set[str] = set()
    final: tuple[float, dict[str, Any]] | None = None  # the last one
    answered: set[str] = set()
    replies: dict[str, str | None] = {}  # reply id → utterance id
    finished: set[str] = set()
    first_delta: dict[str, float] = {}
    done: dict[str, tuple[float, dict[str, Any]]] = {}
    while True:
        if speech_end is None and len(mic.speech_ends) > ends_before:
            speech_end = mic.speech_ends[ends_before]
            deadline = speech_end + TURN_TIMEOUT_S
        # Done once every utterance has its final and every reply has ended. One that ASR
        # found empty never gets a final, so it holds the wait to the deadline.
        if (
            mic.idle
            and speech_end is not None
            and begun <= ended <= answered
            and len(replies) >= len(answered)
            and finished >= replies.keys()
        ):
            break
        left = deadline - time.monotonic()
        if left <= 0:
            turn.errors.append("timed out")
            break
        try:
            event = await asyncio.wait_for(client.events.get(), min(POLL_S, left))
        except TimeoutError:
            continue
        at = received_at(client, event)
        kind = event.get("type")
        if kind == "speech.started":
            begun.add(str(event["utterance_id"]))
        elif kind == "speech.stopped":
            ended.add(str(event["utterance_id"]))
        elif kind == "transcript.final":
            final = (at, event)
            answered.add(str(event["utterance_id"]))
            turn.finals += 1
        elif kind == "reply.started":
            replies[str(event["reply_id"])] = event.get("utterance_id")
        elif kind == "reply.delta":
            first_delta.setdefault(str(event["reply_id"]), at)
        elif kind == "reply.done":
            finished.add(str(event["reply_id"]))
            done[str(event["reply_id"])] = (at, event)
        elif kind == "reply.cancelled":
            finished.add(str(event["reply_id"]))
            turn.cancelled += 1
        elif kind == "error":
            turn.errors.append(f"{event.get('code')}: {event.get('message')}")

    if speech_end is None:
        turn.errors.append("the microphone did not play the sentence in time")
        return turn
    if final is None:
        return turn
    final_at, final_event = final
    turn.text = str(final_event["text"])
    turn.final_timings = {k: float(v) for k, v in final_event.get("timings", {}).items()}
    turn.eos_to_final_ms = 1000 * (final_at - speech_end)
    reply_id = next((r for r, u in replies.items() if u == final_event["utterance_id"]), None)
    if reply_id is None:
        return turn
    if reply_id in first_delta:
        turn.eos_to_first_delta_ms = 1000 * (first_delta[reply_id] - speech_end)
        turn.final_to_first_delta_ms = 1000 * (first_delta[reply_id] - final_at)
    if reply_id in done:
        done_at, done_event = done[reply_id]
        turn.eos_to_done_ms = 1000 * (done_at - speech_end)
        turn.reply_timings = {k: float(v) for k, v in done_event.get("timings", {}).items()}
    return turn


async def converse(
    config: Config,
    engine: ASREngine,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    run: EngineRun,
) -> None:
    runner = web.AppRunner(build_app(config, engine=engine))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        timeout = ClientTimeout(total=CONNECT_TIMEOUT_S)
        async with ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
            client = LoopbackClient()
            try:
                started = time.perf_counter()
                session_id = await asyncio.wait_for(connect(http, client), 2 * CONNECT_TIMEOUT_S)
                run.connect_s = time.perf_counter() - started
                await _turn(client, warmup)  # one-off costs: ONNX, Opus, SCTP, HTTP pool
                for i, sentence in enumerate(sentences, 1):
                    await asyncio.sleep(GAP_S)
                    turn = await _turn(client, sentence)
                    run.turns.append(turn)
                    print(
                        f"  {i}/{len(sentences)}: final {fmt(turn.eos_to_final_ms)} ms, "
                        f"first delta {fmt(turn.eos_to_first_delta_ms)} ms, "
                        f"overhead {fmt(turn.overhead_ms, 1)} ms",
                        flush=True,
                    )
                await bounded("DELETE /sessions", end_session(http, session_id))
            finally:
                await bounded("closing the client", client.close())
    finally:
        await bounded("closing the gateway", runner.cleanup())


async def run_with_ollama(
    name: AsrEngineName,
    engine: ASREngine,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    args: argparse.Namespace,
    run: EngineRun,
) -> None:
    state = FakeOllama(
        first_token_delay_s=args.first_token_ms / 1000, token_interval_s=TOKEN_INTERVAL_S
    )
    async with fake_ollama(state=state) as (_, url):
        config = Config(
            admission="off",
            no_tls=True,
            asr_engine=name,
            vad_silence_ms=args.vad_silence_ms,
            ollama_host=url,
            tts_engine="none",  # text replies: the voice benchmark measures speech
        )
        await converse(config, engine, warmup, sentences, run)


def run_engine(
    name: AsrEngineName,
    warmup: Sentence,
    sentences: Sequence[Sentence],
    args: argparse.Namespace,
) -> EngineRun:
    run = EngineRun(name)
    try:
        started = time.perf_counter()
        engine = load_engine(name, MODEL, DEVICE)
        run.load_s = time.perf_counter() - started
        engine.transcribe(warmup.audio, None)  # the first call pays lazy set-up
        asyncio.run(run_with_ollama(name, engine, warmup, sentences, args, run))
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


# --- summary ---


def _dist(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": mean(values),
        "max": max(values, default=None),
    }


def summarise(run: EngineRun) -> dict[str, Any]:
    def client(key: str) -> list[float]:
        return [float(v) for t in run.turns if (v := getattr(t, key)) is not None]

    def timing(source: str, key: str) -> list[float]:
        return [getattr(t, source)[key] for t in run.turns if key in getattr(t, source)]

    overhead = client("overhead_ms")
    return {
        "engine": run.engine,
        "error": run.error,
        "load_s": round(run.load_s, 2),
        "connect_s": round(run.connect_s, 2),
        "n": len(run.turns),
        "missed": sum(1 for t in run.turns if t.eos_to_first_delta_ms is None),
        "split": sum(1 for t in run.turns if t.finals > 1),
        "cancelled": sum(t.cancelled for t in run.turns),
        "eos_to_final_ms": _dist(client("eos_to_final_ms")),
        "eos_to_first_delta_ms": _dist(client("eos_to_first_delta_ms")),
        "final_to_first_delta_ms": _dist(client("final_to_first_delta_ms")),
        "eos_to_done_ms": _dist(client("eos_to_done_ms")),
        "asr_ms": _dist(timing("final_timings", "asr_ms")),
        "endpoint_to_final_ms": _dist(timing("final_timings", "endpoint_to_final_ms")),
        "llm_first_token_ms": _dist(timing("reply_timings", "llm_first_token_ms")),
        "endpoint_to_first_token_ms": _dist(timing("reply_timings", "endpoint_to_first_token_ms")),
        "overhead_ms": _dist(overhead),
        "overhead_under_target": sum(1 for v in overhead if v < OVERHEAD_TARGET_MS),
    }


def table(summaries: Sequence[dict[str, Any]], first_token_ms: int) -> str:
    header = (
        "engine",
        "n",
        "missed",
        "EoS→final p50",
        "p95",
        "EoS→first delta p50",
        "p95",
        "final→first delta p50",
        "p95",
        "llm_first_token p50",
        "endpoint_to_first_token p50",
        "overhead p50",
        "p95",
        "max",
        f"Ollama client+HTTP p50 (first token - {first_token_ms} ms)",
    )
    rows = []
    for s in summaries:
        if s["error"] and not s["n"]:
            rows.append([s["engine"], "-", "-", "failed (below)", *["-"] * (len(header) - 4)])
            continue

        def ms(key: str, q: str = "p50", digits: int = 0, s: dict[str, Any] = s) -> str:
            return fmt(s[key][q], digits, " ms")

        llm = s["llm_first_token_ms"]["p50"]
        rows.append(
            [
                s["engine"],
                str(s["n"]),
                str(s["missed"]),
                ms("eos_to_final_ms"),
                ms("eos_to_final_ms", "p95"),
                ms("eos_to_first_delta_ms"),
                ms("eos_to_first_delta_ms", "p95"),
                ms("final_to_first_delta_ms"),
                ms("final_to_first_delta_ms", "p95"),
                ms("llm_first_token_ms"),
                ms("endpoint_to_first_token_ms"),
                ms("overhead_ms", digits=1),
                ms("overhead_ms", "p95", 1),
                ms("overhead_ms", "max", 1),
                fmt(None if llm is None else llm - first_token_ms, 1, " ms"),
            ]
        )
    return markdown_table(header, rows)


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, Config().asr_engine)
    add_first_token_argument(parser)


def add_first_token_argument(parser: argparse.ArgumentParser) -> None:
    """``--first-token-ms``, shared with the voice benchmark."""
    parser.add_argument(
        "--first-token-ms",
        type=int,
        default=FIRST_TOKEN_MS,
        metavar="MS",
        help="the test Ollama's fixed time to first token (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    engines = selected_engines(args.engine)
    recording = Recording("e2e")
    warmup, sentences = prepare_sentences(args.quick)
    runs = []
    for name in engines:
        print(f"{name}: {len(sentences)} turns over WebRTC to the test Ollama…", flush=True)
        runs.append(run_engine(name, warmup, sentences, args))
    summaries = [summarise(r) for r in runs]

    machine = recording.machine_after()
    out_path: Path = args.out / "e2e.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "engines": list(engines),
                "model": MODEL,
                "device": DEVICE,
                "vad_silence_ms": args.vad_silence_ms,
                "ollama": "gateway.testing.ollama_server (Ollama-compatible, no model)",
                "first_token_delay_ms": args.first_token_ms,
                "token_interval_ms": 1000 * TOKEN_INTERVAL_S,
                "overhead_target_ms": OVERHEAD_TARGET_MS,
                "sentences": len(sentences),
                "warmup": WARMUP_TEXT,
            },
            "summary": summaries,
            "turns": [
                {
                    "engine": r.engine,
                    "index": i,
                    "reference": sentence.text,
                    "audio_s": round(sentence.duration_s, 3),
                    **asdict(turn),
                    "overhead_ms": turn.overhead_ms,
                }
                for r in runs
                for i, (sentence, turn) in enumerate(zip(sentences, r.turns, strict=False))
            ],
        },
    )

    print()
    print(
        f"tiny.en on CPU; test Ollama: first token after {args.first_token_ms} ms, then a "
        f"piece every {1000 * TOKEN_INTERVAL_S:.0f} ms; VAD silence {args.vad_silence_ms} ms; "
        f"{machine['cpus_usable']} CPUs, load average {machine['load_average'][0]:.2f}"
    )
    print(table(summaries, args.first_token_ms))
    for s in summaries:
        if s["n"]:
            print(
                f"- {s['engine']}: gateway overhead under {OVERHEAD_TARGET_MS:.0f} ms in "
                f"{s['overhead_under_target']} of {s['n']} turns"
                + (f"; {s['split']} split by the VAD" if s["split"] else "")
                + (f"; {s['cancelled']} replies cancelled" if s["cancelled"] else "")
            )
    for r in runs:
        for i, turn in enumerate(r.turns):
            if turn.errors:
                print(f"- {r.engine} turn {i + 1}: {'; '.join(turn.errors)}")
        if r.error:
            print(f"- {r.engine} failed: {r.error}")
    print(f"\nwrote {out_path}")
    return 1 if any(r.error for r in runs) else 0


BENCHMARK = Benchmark(
    name="e2e",
    help="end of speech → transcript.final and → first reply.delta at the client, with the "
    "test Ollama at a fixed time to first token; and the gateway's own overhead",
    add_arguments=add_arguments,
    run=run,
)
