"""Turn detection at the client: how soon a turn ends, how often a pause splits one, and
live captions, each configuration next to today's fixed 500 ms silence from the same run.

``python -m bench turns [--quick] [--engine E] [--first-token-ms MS]``

The real gateway app is served on 127.0.0.1 with a preloaded tiny.en (on CPU) and its
``ollama_host`` pointed at the Ollama-compatible test server with a fixed time to first
token (200 ms by default) and a short fixed answer, so that ``reply.delta`` can be timed.
Real aiortc clients (``gateway.testing.loopback.LoopbackClient``) play Piper speech in real
time; after each clip a client waits until every turn it caused has its
``transcript.final`` and (except after a paused clip, whose reply is not timed) every reply
has ended, then plays the next.

Configurations (everything else at the gateway's defaults):

- ``fixed 500``, the baseline: today's behaviour, a fixed 500 ms silence ends every turn,
  no live captions (``turn_detection="fixed", vad_silence_ms=500, partial_interval_ms=0``);
- ``default (auto)``: the gateway's defaults (Smart Turn plus the text policy when the
  model is found, which it is wherever pipecat-ai is installed; then "auto" *is* "model");
- ``text``, ``model``: ``turn_detection`` forced;
- ``fixed 200``: a fixed 200 ms silence, no captions (what Pipecat does by default);
- ``default, partials off`` / ``default, partials on``: the defaults with
  ``partial_interval_ms`` 0 / 800 (the default, ``auto``, turns captions on only when the
  recogniser runs on a GPU).

Sections:

a. Latency, one client, the transcript benchmark's sentences (complete, each followed by
   silence): end of speech (the mic's last voiced sample leaving the client) →
   ``transcript.final`` and → first ``reply.delta``, both on the client's clock at the
   event's arrival; WER (Whisper's normaliser) of the joined finals; sentences wrongly
   split into two or more turns; ``end_of_turn`` counts.
b. False ends: requests with a pause of 400, 600 and 800 ms in the middle, at a point where
   the words so far are plainly unfinished ("Set an alarm for … half past six"), made with
   ``scripts.make_test_speech.with_pause`` (Piper speaks a comma there, so the voice has
   the level tone of someone not done, then the comma's pause becomes the silence). A clip
   that the gateway ended as two or more turns (``speech.stopped`` events) is a split; the
   share of splits gets a 95% Wilson interval. Turn detection configurations play them
   one client at a time, since whether a verdict arrives before the person goes on depends
   on how busy the recogniser is. The ``fixed`` ones play them on three clients at once:
   there a split depends on the VAD alone, which counts silence in samples, so sharing the
   machine cannot change it, and a third of the wall time is saved.
c. Partials: start of speech (the mic's first voiced sample leaving the client) → the first
   ``transcript.partial``, and whether ``stable_chars`` ever shrank (or the text before it
   changed) within an utterance; then end of speech → final with partials on (default) and
   off, at 1 speaker (section a's two runs) and at 4 (four clients on one gateway, each
   round's sentences started 0.25 s apart so that they overlap).

Client, gateway and test server share this process and its event loop, as in the loopback
tests, on a machine whose load is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aiohttp import ClientSession

from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    mean,
    percentile,
    write_json,
)
from bench.e2e import add_first_token_argument
from bench.transcript import (
    CONNECT_TIMEOUT_S,
    POLL_S,
    SENTENCES,
    WARMUP_TEXT,
    Normaliser,
    bounded,
    connect,
    end_session,
    english_normaliser,
    received_at,
    score,
    selected_engines,
    served,
)
from gateway.conversation.endofturn import TurnDetection
from gateway.ops.config import ASR_ENGINES, AsrEngineName, Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama
from media import Float32Array
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from scripts.make_test_speech import (
    SAMPLE_RATE,
    SPEECH_PEAK,
    load_voice,
    scale_to_peak,
    synthesize,
    with_pause,
    with_silence,
)

logger = logging.getLogger(__name__)

MODEL = "tiny.en"
DEVICE = "cpu"
TOKEN_INTERVAL_S = 0.02
# A short answer: the next clip need not wait for a long one to stream.
REPLY = "Sure, one moment."

# Requests with a pause where the words so far are plainly unfinished: after a preposition,
# an article, "to", a possessive, "tell me", "like to know". "|" marks the pause. None is
# in tests/data or in the transcript benchmark's sentences.
PAUSED_SENTENCES: tuple[str, ...] = (
    "Can you tell me | how long it takes to boil an egg?",
    "Set an alarm for | half past six tomorrow morning.",
    "Remind me to pick up the | dry cleaning after work.",
    "How do I change my | password on this laptop?",
    "I would like to know | what time the museum opens on Saturday.",
    "Send a text message to | my brother about dinner on Friday.",
    "What is the quickest way to | get to the airport from here?",
    "Please add a meeting with | the design team to my calendar.",
    "Play the latest episode of | my favourite podcast.",
    "Could you turn up the | volume in the bedroom a little?",
    "Find a cheap hotel near | the train station in Berlin.",
    "I need to buy a present for | my sister's birthday next week.",
)
PAUSES_MS: tuple[int, ...] = (400, 600, 800)
# --quick: the first three sentences at the shortest and the longest pause.
QUICK_PAUSED = 3
QUICK_PAUSES_MS: tuple[int, ...] = (400, 800)
QUICK_SENTENCES = 4
# Section c at 4 speakers: rounds of 4 overlapping sentences.
SPEAKERS = 4
ROUNDS = 5
QUICK_ROUNDS = 2
STAGGER_S = 0.25
# The fixed configurations' false ends, on this many clients at once (see the docstring).
FIXED_FALSE_END_CLIENTS = 3

GAP_S = 0.1  # between one clip's last event and the next clip (each has 0.3 s lead silence)
PLAYBACK_SLACK_S = 5.0  # how late the microphone may run before the clip is given up
TURN_TIMEOUT_S = 15.0  # end of speech → every turn answered, beyond this: a miss
# A turn whose transcript was empty never gets a final: stop waiting for it after this.
NO_FINAL_GRACE_S = 5.0

# Targets (the issue's), checked in the summary.
FINAL_P50_TARGET_MS = 500.0
FINAL_P95_TARGET_MS = 700.0
FIRST_DELTA_P50_TARGET_MS = 600.0
FALSE_END_TARGET = 0.05
WER_TARGET_POINTS = 0.5
FIRST_PARTIAL_TARGET_MS = 1200.0
# "No slower" with partials on: within one 20 ms audio frame.
PARTIALS_TOLERANCE_MS = 20.0

ClipKind = Literal["warmup", "complete", "paused"]


# --- configurations ---


@dataclass(frozen=True)
class Setup:
    name: str
    turn_detection: TurnDetection
    vad_silence_ms: int | None = None  # None: the gateway's default
    partial_interval_ms: int | None = None

    def config(self, engine: AsrEngineName, ollama_host: str) -> Config:
        config = Config(
            admission="off",
            no_tls=True,
            asr_engine=engine,
            ollama_host=ollama_host,
            tts_engine="none",  # text replies only
            turn_detection=self.turn_detection,
        )
        if self.vad_silence_ms is not None:
            config = replace(config, vad_silence_ms=self.vad_silence_ms)
        if self.partial_interval_ms is not None:
            config = replace(config, partial_interval_ms=self.partial_interval_ms)
        return config

    def settings(self) -> dict[str, Any]:
        config = self.config("openai-whisper", "http://127.0.0.1:1")
        return {
            "turn_detection": config.turn_detection,
            "vad_silence_ms": config.vad_silence_ms,
            "turn_min_silence_ms": config.turn_min_silence_ms,
            "turn_likely_silence_ms": config.turn_likely_silence_ms,
            "partial_interval_ms": config.partial_interval_ms,
        }


BASELINE = Setup("fixed 500", "fixed", vad_silence_ms=500, partial_interval_ms=0)
DEFAULT = Setup("default (auto)", "auto")
TEXT = Setup("text", "text")
MODEL_SETUP = Setup("model", "model")
FIXED_200 = Setup("fixed 200", "fixed", vad_silence_ms=200, partial_interval_ms=0)
PARTIALS_OFF = Setup("default, partials off", "auto", partial_interval_ms=0)
# The default is "auto" (captions on a GPU only): on this CPU captions must be asked for.
PARTIALS_ON = Setup("default, partials on", "auto", partial_interval_ms=800)

LATENCY_SETUPS: tuple[Setup, ...] = (
    BASELINE,
    DEFAULT,
    TEXT,
    MODEL_SETUP,
    FIXED_200,
    PARTIALS_OFF,
    PARTIALS_ON,
)
FALSE_END_SETUPS: tuple[Setup, ...] = (FIXED_200, BASELINE, TEXT, MODEL_SETUP, DEFAULT)


# --- speech ---


@dataclass(frozen=True)
class Clip:
    kind: ClipKind
    text: str
    audio: Float32Array  # 16 kHz, 0.3 s lead and 0.2 s trail of silence
    pause_ms: int | None = None
    words_before_pause: int | None = None

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def pause_point(marked: str) -> tuple[str, int]:
    """``"Set an alarm for | half past six."`` → the sentence and the words before "|"."""
    before, bar, after = marked.partition("|")
    words_before, words_after = before.split(), after.split()
    if not bar or not words_before or not words_after or "|" in after:
        raise ValueError(f"need one '|' between words in {marked!r}")
    return " ".join(words_before + words_after), len(words_before)


def make_clips(
    complete: Sequence[str], paused: Sequence[str], pauses_ms: Sequence[int]
) -> tuple[Clip, list[Clip], list[Clip]]:
    """The warm-up, the complete sentences and the paused ones (each sentence at each
    pause, sentence by sentence), shaped like the committed test clips."""
    voice = load_voice(alignments=True)

    def shaped(audio: Float32Array) -> Float32Array:
        return with_silence(scale_to_peak(audio, SPEECH_PEAK))

    warmup = Clip("warmup", WARMUP_TEXT, shaped(synthesize(WARMUP_TEXT, voice)))
    whole = [Clip("complete", text, shaped(synthesize(text, voice))) for text in complete]
    stopped = []
    for marked in paused:
        text, before = pause_point(marked)
        for pause in pauses_ms:
            audio = shaped(with_pause(text, before, pause / 1000, voice))
            stopped.append(Clip("paused", text, audio, pause, before))
    return warmup, whole, stopped


# --- one clip, played and heard ---


@dataclass(frozen=True)
class Partial:
    after_start_ms: float | None  # start of speech at the mic → this partial's arrival
    utterance_id: str
    text: str
    stable_chars: int


@dataclass
class Played:
    """What one client saw for one clip (times in ms on the client's clock)."""

    setup: str
    kind: ClipKind
    index: int
    client: int
    speakers: int  # clients on the gateway at once
    reference: str
    pause_ms: int | None = None
    utterances: int = 0  # speech.started
    turns: int = 0  # speech.stopped
    end_of_turn: list[str] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    eos_to_final_ms: float | None = None  # to the last final
    eos_to_first_delta_ms: float | None = None  # to the first piece of its reply
    final_timings: dict[str, float] = field(default_factory=dict)
    partials: list[Partial] = field(default_factory=list)
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.finals)

    @property
    def split(self) -> bool:
        return self.turns >= 2


def _drain(client: LoopbackClient) -> None:
    """Anything still queued belongs to the clip before (a late cancellation)."""
    while not client.events.empty():
        client.events.get_nowait()


async def play(
    client: LoopbackClient, clip: Clip, played: Played, *, replies: bool = True
) -> Played:
    """Play ``clip``; wait until every turn it caused has its final (or is given up as
    empty) and, with ``replies``, every reply begun has ended; fill in ``played``."""
    _drain(client)
    mic = client.mic
    starts_before, ends_before = len(mic.speech_onsets), len(mic.speech_ends)
    mic.play(clip.audio)
    deadline = time.monotonic() + clip.duration_s + PLAYBACK_SLACK_S

    speech_start: float | None = None
    speech_end: float | None = None
    begun: set[str] = set()
    stopped_at: dict[str, float] = {}
    finals: list[tuple[float, dict[str, Any]]] = []
    started: dict[str, str | None] = {}  # reply id → utterance id
    finished: set[str] = set()
    first_delta: dict[str, float] = {}
    partials: list[tuple[float, dict[str, Any]]] = []
    while True:
        now = time.monotonic()
        if speech_start is None and len(mic.speech_onsets) > starts_before:
            speech_start = mic.speech_onsets[starts_before]
        if speech_end is None and len(mic.speech_ends) > ends_before:
            speech_end = mic.speech_ends[ends_before]
            deadline = speech_end + TURN_TIMEOUT_S
        answered = {str(event["utterance_id"]) for _, event in finals}
        settled = all(u in answered or now - at > NO_FINAL_GRACE_S for u, at in stopped_at.items())
        if (
            mic.idle
            and speech_end is not None
            and begun
            and begun <= stopped_at.keys()
            and settled
            and (not replies or (answered <= set(started.values()) and finished >= started.keys()))
        ):
            break
        left = deadline - now
        if left <= 0:
            played.errors.append("timed out")
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
            stopped_at[str(event["utterance_id"])] = at
            played.end_of_turn.append(str(event.get("end_of_turn", "?")))
        elif kind == "transcript.partial":
            partials.append((at, event))
        elif kind == "transcript.final":
            finals.append((at, event))
        elif kind == "reply.started":
            started[str(event["reply_id"])] = event.get("utterance_id")
        elif kind == "reply.delta":
            first_delta.setdefault(str(event["reply_id"]), at)
        elif kind == "reply.done":
            finished.add(str(event["reply_id"]))
        elif kind == "reply.cancelled":
            if str(event["reply_id"]) in started:
                finished.add(str(event["reply_id"]))
                played.cancelled += 1
        elif kind == "error":
            played.errors.append(f"{event.get('code')}: {event.get('message')}")

    if speech_end is None:
        played.errors.append("the microphone did not play the clip in time")
    played.utterances, played.turns = len(begun), len(stopped_at)
    played.finals = [str(event["text"]) for _, event in finals]
    played.partials = [
        Partial(
            None if speech_start is None else round(1000 * (at - speech_start), 1),
            str(event["utterance_id"]),
            str(event["text"]),
            int(event["stable_chars"]),
        )
        for at, event in partials
    ]
    if speech_end is None or not finals:
        return played
    last_at, last = finals[-1]
    played.eos_to_final_ms = round(1000 * (last_at - speech_end), 1)
    played.final_timings = {k: float(v) for k, v in last.get("timings", {}).items()}
    reply = next((r for r, u in started.items() if u == last["utterance_id"]), None)
    if reply is not None and reply in first_delta:
        played.eos_to_first_delta_ms = round(1000 * (first_delta[reply] - speech_end), 1)
    return played


# --- one gateway, some clients ---


@dataclass(frozen=True)
class Pass:
    """One gateway with ``setup``; client i plays ``plans[i]``, a clip per round, the
    rounds' clips started ``stagger_s`` apart."""

    setup: Setup
    plans: tuple[tuple[Clip, ...], ...]
    stagger_s: float = 0.0

    @property
    def clips(self) -> int:
        return sum(len(plan) for plan in self.plans)


@dataclass
class PassResult:
    setup: str
    speakers: int
    played: list[Played] = field(default_factory=list)
    connect_s: float = 0.0
    duration_s: float = 0.0
    error: str | None = None


async def run_pass(
    bench_pass: Pass,
    name: AsrEngineName,
    engine: ASREngine,
    warmup: Clip,
    first_token_ms: int,
    result: PassResult,
) -> None:
    state = FakeOllama(
        first_token_delay_s=first_token_ms / 1000, token_interval_s=TOKEN_INTERVAL_S, reply=REPLY
    )
    async with fake_ollama(state=state) as (_, url):
        config = bench_pass.setup.config(name, url)
        async with served(config, engine) as http:
            clients = [LoopbackClient() for _ in bench_pass.plans]
            try:
                await _converse(bench_pass, http, clients, warmup, result)
            finally:
                for client in clients:
                    await bounded("closing a client", client.close())


async def _converse(
    bench_pass: Pass,
    http: ClientSession,
    clients: Sequence[LoopbackClient],
    warmup: Clip,
    result: PassResult,
) -> None:
    setup, speakers = bench_pass.setup, len(clients)
    started = time.perf_counter()
    sessions = [
        await asyncio.wait_for(connect(http, client), 2 * CONNECT_TIMEOUT_S) for client in clients
    ]
    result.connect_s = round(time.perf_counter() - started, 2)

    def blank(kind: ClipKind, index: int, client: int, clip: Clip) -> Played:
        return Played(setup.name, kind, index, client, speakers, clip.text, clip.pause_ms)

    # One-off costs (ONNX sessions, Opus, SCTP, the HTTP pool to Ollama), not counted.
    await asyncio.gather(
        *(play(c, warmup, blank("warmup", 0, i, warmup)) for i, c in enumerate(clients))
    )

    async def one(i: int, k: int) -> Played | None:
        plan = bench_pass.plans[i]
        if k >= len(plan):
            return None
        await asyncio.sleep(i * bench_pass.stagger_s)
        clip = plan[k]
        # A paused clip's reply is not timed: the next clip need not wait for it (speaking
        # again cancels it, as it would a person's).
        replies = clip.kind != "paused"
        return await play(clients[i], clip, blank(clip.kind, k, i, clip), replies=replies)

    rounds = max(len(plan) for plan in bench_pass.plans)
    for k in range(rounds):
        await asyncio.sleep(GAP_S)
        heard = [p for p in await asyncio.gather(*(one(i, k) for i in range(speakers))) if p]
        result.played += heard
        print(f"  {setup.name}, {speakers} client(s), {k + 1}/{rounds}: {_progress(heard)}")
    for session_id in sessions:
        await bounded("DELETE /sessions", end_session(http, session_id))


def _progress(heard: Sequence[Played]) -> str:
    parts = []
    for p in heard:
        what = f"{p.kind}" + (f" {p.pause_ms} ms" if p.pause_ms is not None else "")
        parts.append(
            f"{what}: {p.turns} turn(s), final {fmt(p.eos_to_final_ms)} ms, "
            f"delta {fmt(p.eos_to_first_delta_ms)} ms"
            + (f", errors: {'; '.join(p.errors)}" if p.errors else "")
        )
    return " | ".join(parts)


def run_engine(
    name: AsrEngineName,
    passes: Sequence[Pass],
    warmup: Clip,
    first_token_ms: int,
) -> tuple[float, list[PassResult]]:
    started = time.perf_counter()
    engine = load_engine(name, MODEL, DEVICE)
    load_s = time.perf_counter() - started
    engine.transcribe(warmup.audio, None)  # the first call pays lazy set-up
    results = []
    for bench_pass in passes:
        result = PassResult(bench_pass.setup.name, len(bench_pass.plans))
        print(
            f"{name}: {bench_pass.setup.name}, {bench_pass.clips} clips on "
            f"{len(bench_pass.plans)} client(s)…",
            flush=True,
        )
        begun = time.perf_counter()
        try:
            asyncio.run(run_pass(bench_pass, name, engine, warmup, first_token_ms, result))
        except Exception as exc:
            logger.exception("%s: %s failed", name, bench_pass.setup.name)
            result.error = f"{type(exc).__name__}: {exc}"
        result.duration_s = round(time.perf_counter() - begun, 1)
        results.append(result)
    return load_s, results


def plan_passes(complete: Sequence[Clip], paused: Sequence[Clip], rounds: int) -> list[Pass]:
    """Every gateway the run starts. Turn-detection configurations hear their complete and
    paused clips in one session; the fixed ones hear the paused clips on several clients
    at once (a split there is the VAD's alone); the last two passes are section c's."""
    passes = []
    for setup in LATENCY_SETUPS:
        clips = tuple(complete)
        if setup in FALSE_END_SETUPS and setup.turn_detection != "fixed":
            clips += tuple(paused)
        passes.append(Pass(setup, (clips,)))
    for setup in FALSE_END_SETUPS:
        if setup.turn_detection == "fixed":
            n = FIXED_FALSE_END_CLIENTS
            passes.append(Pass(setup, tuple(tuple(paused[i::n]) for i in range(n)), STAGGER_S))
    for setup in (PARTIALS_ON, PARTIALS_OFF):
        plans = tuple(
            tuple(complete[(k * SPEAKERS + i) % len(complete)] for k in range(rounds))
            for i in range(SPEAKERS)
        )
        passes.append(Pass(setup, plans, STAGGER_S))
    return passes


# --- statistics (pure) ---


def dist(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": mean(values),
        "max": max(values, default=None),
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval for ``k`` of ``n`` (95% by default)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def corpus_wer(pairs: Iterable[tuple[str, str]], normalise: Normaliser) -> float | None:
    """Word errors over reference words, over every (reference, hypothesis) pair."""
    errors = words = 0
    for reference, hypothesis in pairs:
        scored = score(reference, hypothesis, normalise)
        errors += scored["word_errors"]
        words += scored["ref_words"]
    return errors / words if words else None


def caption_faults(partials: Sequence[Partial]) -> tuple[int, int]:
    """(utterances whose ``stable_chars`` shrank, utterances whose stable text changed):
    ``text[:stable_chars]`` is promised never to change."""
    by_utterance: dict[str, list[Partial]] = {}
    for partial in partials:
        by_utterance.setdefault(partial.utterance_id, []).append(partial)
    shrank = rewritten = 0
    for seq in by_utterance.values():
        pairs = list(itertools.pairwise(seq))
        shrank += any(b.stable_chars < a.stable_chars for a, b in pairs)
        rewritten += any(b.text[: a.stable_chars] != a.text[: a.stable_chars] for a, b in pairs)
    return shrank, rewritten


def latency_summary(played: Sequence[Played], normalise: Normaliser) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [float(v) for p in played if (v := getattr(p, key)) is not None]

    return {
        "n": len(played),
        "missed": sum(1 for p in played if p.eos_to_final_ms is None),
        "split": sum(1 for p in played if p.split),
        "eos_to_final_ms": dist(values("eos_to_final_ms")),
        "eos_to_first_delta_ms": dist(values("eos_to_first_delta_ms")),
        "asr_ms_p50": percentile(
            [p.final_timings["asr_ms"] for p in played if "asr_ms" in p.final_timings], 50
        ),
        "wer": corpus_wer(((p.reference, p.text) for p in played), normalise),
        "end_of_turn": dict(Counter(e for p in played for e in p.end_of_turn)),
        "cancelled": sum(p.cancelled for p in played),
    }


def false_end_summary(played: Sequence[Played], normalise: Normaliser) -> dict[str, Any]:
    splits = sum(1 for p in played if p.split)
    interval = wilson(splits, len(played))
    by_pause: dict[str, dict[str, int]] = {}
    for p in sorted(played, key=lambda p: p.pause_ms or 0):
        row = by_pause.setdefault(str(p.pause_ms), {"n": 0, "split": 0})
        row["n"] += 1
        row["split"] += p.split
    return {
        "n": len(played),
        "split": splits,
        "rate": splits / len(played) if played else None,
        "ci95": list(interval) if interval else None,
        "by_pause_ms": by_pause,
        "missed": sum(1 for p in played if not p.finals),
        "end_of_turn": dict(Counter(e for p in played for e in p.end_of_turn)),
        "wer_joined": corpus_wer(((p.reference, p.text) for p in played), normalise),
    }


def partial_summary(played: Sequence[Played]) -> dict[str, Any]:
    firsts = [
        p.partials[0].after_start_ms
        for p in played
        if p.partials and p.partials[0].after_start_ms is not None
    ]
    faults = [caption_faults(p.partials) for p in played]
    return {
        "utterances": len(played),
        "with_partial": sum(1 for p in played if p.partials),
        "partials": sum(len(p.partials) for p in played),
        "start_to_first_partial_ms": dist(firsts),
        "stable_chars_shrank": sum(s for s, _ in faults),
        "stable_text_changed": sum(r for _, r in faults),
    }


def select(
    results: Sequence[PassResult], setup: Setup, kind: ClipKind, speakers: int | None = None
) -> list[Played]:
    return [
        p
        for r in results
        for p in r.played
        if p.setup == setup.name and p.kind == kind and (speakers is None or p.speakers == speakers)
    ]


def summarise(results: Sequence[PassResult], normalise: Normaliser) -> dict[str, Any]:
    latency = {
        s.name: latency_summary(select(results, s, "complete", 1), normalise)
        for s in LATENCY_SETUPS
    }
    false_ends = {
        s.name: false_end_summary(select(results, s, "paused"), normalise) for s in FALSE_END_SETUPS
    }
    partials = {
        f"{speakers}": partial_summary(select(results, PARTIALS_ON, "complete", speakers))
        for speakers in (1, SPEAKERS)
    }
    on_off = {
        f"{speakers}": {
            "on": latency_summary(select(results, PARTIALS_ON, "complete", speakers), normalise),
            "off": latency_summary(select(results, PARTIALS_OFF, "complete", speakers), normalise),
        }
        for speakers in (1, SPEAKERS)
    }
    return {
        "latency": latency,
        "false_ends": false_ends,
        "partials": partials,
        "partials_on_off": on_off,
    }


def _p(summary: dict[str, Any], key: str, q: str = "p50") -> float | None:
    value = summary[key][q]
    return None if value is None else float(value)


def targets(summary: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, the figures) for each of the issue's targets."""
    base = summary["latency"][BASELINE.name]
    default = summary["latency"][DEFAULT.name]
    out: list[tuple[str, bool | None, str]] = []

    def check(label: str, value: float | None, limit: float, figures: str) -> None:
        out.append((label, None if value is None else value <= limit, figures))

    p50, p95 = _p(default, "eos_to_final_ms"), _p(default, "eos_to_final_ms", "p95")
    figures = (
        f"p50 {fmt(p50)} ms, p95 {fmt(p95)} ms (fixed 500: "
        f"{fmt(_p(base, 'eos_to_final_ms'))}, {fmt(_p(base, 'eos_to_final_ms', 'p95'))})"
    )
    check(f"EoS→final p50 ≤ {FINAL_P50_TARGET_MS:.0f} ms", p50, FINAL_P50_TARGET_MS, figures)
    check(f"EoS→final p95 ≤ {FINAL_P95_TARGET_MS:.0f} ms", p95, FINAL_P95_TARGET_MS, figures)
    delta = _p(default, "eos_to_first_delta_ms")
    check(
        f"EoS→first reply.delta p50 ≤ {FIRST_DELTA_P50_TARGET_MS:.0f} ms",
        delta,
        FIRST_DELTA_P50_TARGET_MS,
        f"{fmt(delta)} ms (fixed 500: {fmt(_p(base, 'eos_to_first_delta_ms'))})",
    )
    falses = summary["false_ends"][DEFAULT.name]
    ci = falses["ci95"]
    check(
        f"false ends (default) ≤ {100 * FALSE_END_TARGET:.0f}%",
        falses["rate"],
        FALSE_END_TARGET,
        f"{falses['split']}/{falses['n']}"
        + (f", 95% CI {100 * ci[0]:.0f}-{100 * ci[1]:.0f}%" if ci else ""),
    )
    wer_d, wer_b = default["wer"], base["wer"]
    points = None if wer_d is None or wer_b is None else 100 * (wer_d - wer_b)
    check(
        f"WER ≤ fixed 500 + {WER_TARGET_POINTS} points",
        points,
        WER_TARGET_POINTS,
        f"{fmt(_pct(wer_d), 1)}% vs {fmt(_pct(wer_b), 1)}% ({fmt(points, 1)} points)",
    )
    first = summary["partials"]["1"]["start_to_first_partial_ms"]
    check(
        f"first partial ≤ {FIRST_PARTIAL_TARGET_MS:.0f} ms after speech starts (p95)",
        first["p95"],
        FIRST_PARTIAL_TARGET_MS,
        f"p50 {fmt(first['p50'])} ms, p95 {fmt(first['p95'])} ms, max {fmt(first['max'])} ms",
    )
    for speakers, pair in summary["partials_on_off"].items():
        on, off = pair["on"], pair["off"]
        on50, off50 = _p(on, "eos_to_final_ms"), _p(off, "eos_to_final_ms")
        on95, off95 = _p(on, "eos_to_final_ms", "p95"), _p(off, "eos_to_final_ms", "p95")
        d50 = None if on50 is None or off50 is None else on50 - off50
        d95 = None if on95 is None or off95 is None else on95 - off95
        check(
            f"finals with partials on no slower than off, {speakers} speaker(s) "
            f"(p50 within {PARTIALS_TOLERANCE_MS:.0f} ms)",
            d50,
            PARTIALS_TOLERANCE_MS,
            f"p50 {fmt(on50)} vs {fmt(off50)} ms ({_signed(d50)}), "
            f"p95 {fmt(on95)} vs {fmt(off95)} ms ({_signed(d95)})",
        )
    return out


# --- tables ---


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _signed(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def versus(value: float | None, base: float | None, digits: int = 0, suffix: str = "") -> str:
    """``value`` with its difference from the baseline's: "480 ms (-470)"."""
    if value is None:
        return "-"
    shown = fmt(value, digits, suffix)
    if base is None:
        return shown
    return f"{shown} ({_signed(value - base, digits)})"


def counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"


def latency_table(latency: dict[str, dict[str, Any]], baseline: str) -> str:
    header = (
        "configuration",
        "n",
        "missed",
        "split",
        "EoS→final p50 (Δ)",
        "p95 (Δ)",
        "mean (Δ)",
        "EoS→first delta p50 (Δ)",
        "p95 (Δ)",
        "asr p50",
        "WER (Δ pts)",
        "end_of_turn",
    )
    base = latency[baseline]
    rows = []
    for name, s in latency.items():
        b = None if name == baseline else base

        def ms(key: str, q: str, s: dict[str, Any] = s, b: dict[str, Any] | None = b) -> str:
            return versus(_p(s, key, q), None if b is None else _p(b, key, q), suffix=" ms")

        wer = _pct(s["wer"])
        base_wer = None if b is None else _pct(b["wer"])
        rows.append(
            [
                name,
                str(s["n"]),
                str(s["missed"]),
                str(s["split"]),
                ms("eos_to_final_ms", "p50"),
                ms("eos_to_final_ms", "p95"),
                ms("eos_to_final_ms", "mean"),
                ms("eos_to_first_delta_ms", "p50"),
                ms("eos_to_first_delta_ms", "p95"),
                fmt(s["asr_ms_p50"], suffix=" ms"),
                versus(wer, base_wer, 1, "%"),
                counts(s["end_of_turn"]),
            ]
        )
    return markdown_table(header, rows)


def false_end_table(false_ends: dict[str, dict[str, Any]]) -> str:
    pauses = sorted({int(k) for s in false_ends.values() for k in s["by_pause_ms"]})
    header = (
        "configuration",
        "n",
        "split",
        "rate",
        "95% CI",
        *(f"split at {p} ms" for p in pauses),
        "end_of_turn",
        "WER joined",
    )
    rows = []
    for name, s in false_ends.items():
        ci = s["ci95"]
        by_pause = s["by_pause_ms"]
        rows.append(
            [
                name,
                str(s["n"]),
                str(s["split"]),
                fmt(_pct(s["rate"]), 1, "%"),
                f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%" if ci else "-",
                *(
                    f"{by_pause[str(p)]['split']}/{by_pause[str(p)]['n']}"
                    if str(p) in by_pause
                    else "-"
                    for p in pauses
                ),
                counts(s["end_of_turn"]),
                fmt(_pct(s["wer_joined"]), 1, "%"),
            ]
        )
    return markdown_table(header, rows)


def partials_table(partials: dict[str, dict[str, Any]]) -> str:
    header = (
        "speakers",
        "utterances",
        "with a partial",
        "partials",
        "start→first partial p50",
        "p95",
        "max",
        "stable_chars shrank",
        "stable text changed",
    )
    rows = []
    for speakers, s in partials.items():
        first = s["start_to_first_partial_ms"]
        rows.append(
            [
                speakers,
                str(s["utterances"]),
                str(s["with_partial"]),
                str(s["partials"]),
                fmt(first["p50"], suffix=" ms"),
                fmt(first["p95"], suffix=" ms"),
                fmt(first["max"], suffix=" ms"),
                str(s["stable_chars_shrank"]),
                str(s["stable_text_changed"]),
            ]
        )
    return markdown_table(header, rows)


def on_off_table(on_off: dict[str, dict[str, Any]]) -> str:
    header = (
        "speakers",
        "n on/off",
        "EoS→final p50 on",
        "off",
        "Δ",
        "p95 on",
        "off",
        "Δ",
        "EoS→first delta p50 on",
        "off",
    )
    rows = []
    for speakers, pair in on_off.items():
        on, off = pair["on"], pair["off"]
        cells = [speakers, f"{on['n']}/{off['n']}"]
        for q in ("p50", "p95"):
            a, b = _p(on, "eos_to_final_ms", q), _p(off, "eos_to_final_ms", q)
            d = None if a is None or b is None else a - b
            cells += [fmt(a, suffix=" ms"), fmt(b, suffix=" ms"), _signed(d)]
        cells += [
            fmt(_p(on, "eos_to_first_delta_ms"), suffix=" ms"),
            fmt(_p(off, "eos_to_first_delta_ms"), suffix=" ms"),
        ]
        rows.append(cells)
    return markdown_table(header, rows)


def targets_lines(checked: Sequence[tuple[str, bool | None, str]]) -> list[str]:
    verdicts = {True: "met", False: "NOT met", None: "no data"}
    return [f"- {verdicts[met]}: {label}: {figures}" for label, met, figures in checked]


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=(*ASR_ENGINES, "both"),
        default=Config().asr_engine,
        help="which ASR engine to measure (default %(default)s)",
    )
    add_first_token_argument(parser)


def run(args: argparse.Namespace) -> int:
    engines = selected_engines(args.engine)
    recording = Recording("turns")
    complete = SENTENCES[:QUICK_SENTENCES] if args.quick else SENTENCES
    paused = PAUSED_SENTENCES[:QUICK_PAUSED] if args.quick else PAUSED_SENTENCES
    pauses = QUICK_PAUSES_MS if args.quick else PAUSES_MS
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    print(
        f"synthesising {len(complete)} sentences and {len(paused)} x {len(pauses)} paused "
        "ones with Piper…",
        flush=True,
    )
    warmup, whole, stopped = make_clips(complete, paused, pauses)
    passes = plan_passes(whole, stopped, rounds)
    normalise = english_normaliser()

    per_engine: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    failed = False
    for name in engines:
        load_s, results = run_engine(name, passes, warmup, args.first_token_ms)
        failed |= any(r.error for r in results)
        summary = summarise(results, normalise)
        per_engine.append(
            {
                "engine": name,
                "load_s": round(load_s, 2),
                "passes": [{k: v for k, v in asdict(r).items() if k != "played"} for r in results],
                **summary,
                "targets": [
                    {"target": label, "met": met, "figures": figures}
                    for label, met, figures in targets(summary)
                ],
            }
        )
        records += [{"engine": name, **asdict(p)} for r in results for p in r.played]

    machine = recording.machine_after()
    out_path: Path = args.out / "turns.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "engines": list(engines),
                "model": MODEL,
                "device": DEVICE,
                "ollama": "gateway.testing.ollama_server (Ollama-compatible, no model)",
                "first_token_delay_ms": args.first_token_ms,
                "token_interval_ms": 1000 * TOKEN_INTERVAL_S,
                "reply": REPLY,
                "setups": {s.name: s.settings() for s in (*LATENCY_SETUPS, *FALSE_END_SETUPS)},
                "sentences": list(complete),
                "paused_sentences": list(paused),
                "pauses_ms": list(pauses),
                "fixed_false_end_clients": FIXED_FALSE_END_CLIENTS,
                "speakers": SPEAKERS,
                "rounds": rounds,
                "stagger_s": STAGGER_S,
                "warmup": WARMUP_TEXT,
                "wer": "corpus (word errors / reference words), "
                "whisper.normalizers.EnglishTextNormalizer",
            },
            "summary": per_engine,
            "records": records,
        },
    )

    print()
    print(
        f"tiny.en on CPU; test Ollama: first token after {args.first_token_ms} ms; "
        f"{machine['cpus_usable']} CPUs, load average {machine['load_average'][0]:.2f}"
    )
    for s in per_engine:
        print(f"\n## {s['engine']}")
        print(
            f"\na. Latency, {len(complete)} complete sentences, one speaker "
            f"(Δ: against {BASELINE.name}, today's behaviour, same run)"
        )
        print(latency_table(s["latency"], BASELINE.name))
        print(
            f"\nb. False ends: {len(paused)} sentences paused mid-way at "
            f"{', '.join(str(p) for p in pauses)} ms (split: ended as 2 or more turns)"
        )
        print(false_end_table(s["false_ends"]))
        print(f"\nc. Partials ({PARTIALS_ON.name}): start of speech → first transcript.partial")
        print(partials_table(s["partials"]))
        print(
            f"\nc. End of speech → final with partials on ({PARTIALS_ON.name}) and off, "
            f"at 1 and {SPEAKERS} speakers"
        )
        print(on_off_table(s["partials_on_off"]))
        print("\nTargets:")
        print(
            "\n".join(targets_lines([(t["target"], t["met"], t["figures"]) for t in s["targets"]]))
        )
        for p in s["passes"]:
            if p["error"]:
                print(f"- {p['setup']} ({p['speakers']} client(s)) failed: {p['error']}")
    for rec in records:
        if rec["errors"] and rec["kind"] != "warmup":
            print(f"- {rec['setup']}: {rec['reference']!r}: {'; '.join(rec['errors'])}")
    print(f"\nwrote {out_path}")
    return 1 if failed else 0


BENCHMARK = Benchmark(
    name="turns",
    help="turn detection: end of speech → final and → first reply.delta per configuration, "
    "false ends on paused speech, and live captions, against today's fixed 500 ms",
    add_arguments=add_arguments,
    run=run,
)
