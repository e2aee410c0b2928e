"""Admission from measured capacity (issue 12): when more people arrive than the machine
can serve, are the newcomers refused before those already talking slow down?

Against a real gateway (``serve --workers 2`` by default: two media workers and the shared
ASR server; ``--workers 1``: one process), with the test Ollama, twice in the same run, the
second time as the baseline:

1. ``measured``: the gateway as shipped (``--admission measured``);
2. ``off``: ``--admission off``, everyone admitted.

Each time, one session first speaks alone for ``--alone-s`` (the one-session figure of end
of speech → ``transcript.final``), then a new session arrives every ``--arrive-every-s``
until ``--arrivals`` have tried; every admitted one speaks a sentence, waits for the
answer and a few seconds of silence, again and again, to the end. A refused arrival (503
``at_capacity``) is counted and goes away, as a browser would after its back-off.

Reported per configuration: admitted and refused, end of speech → final p50/p95 of the
crowd phase's turns against the one-session p95 (the target: at most 1.5x), and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from bench.common import Benchmark, Recording, fmt, markdown_table, percentile, write_json
from bench.soak import GAP_S, TOKEN_INTERVAL_S, _await_reply, gateway_process
from bench.transcript import (
    BenchError,
    Sentence,
    _hear,
    bounded,
    connect,
    end_session,
    prepare_sentences,
)
from gateway.ops.config import ASR_ENGINES, Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.5
SEED = 5


@dataclass
class Crowd:
    """What one configuration's run saw."""

    admission: str
    alone_ms: list[float] = field(default_factory=list)  # the lone session's turns
    crowd_ms: list[float] = field(default_factory=list)  # every turn once others arrived
    admitted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


async def talk(
    http: ClientSession,
    client: LoopbackClient,
    sentences: Sequence[Sentence],
    until: float,
    into: list[float],
    crowd: Crowd,
    seed: int,
) -> None:
    """Speak, wait for the answer, pause; the end-of-speech → final latencies go ``into``."""
    rng = random.Random(seed)
    spoken = 0
    while time.monotonic() < until:
        since = len(client.received)
        heard = await _hear(client, sentences[spoken % len(sentences)])
        spoken += 1
        if heard.latency_ms is None:
            crowd.errors.append("no transcript.final")
        else:
            into.append(heard.latency_ms)
            problem = await _await_reply(client, since)
            if problem is not None:
                crowd.errors.append(problem)
        await asyncio.sleep(rng.uniform(*GAP_S))


async def arrive(
    http: ClientSession,
    sentences: Sequence[Sentence],
    until: float,
    crowd: Crowd,
    index: int,
    lone: bool = False,
) -> None:
    client = LoopbackClient()
    try:
        try:
            session_id = await connect(http, client)
        except BenchError as exc:
            if " 503 " in str(exc) and "at_capacity" in str(exc):
                crowd.refused += 1
                return
            crowd.errors.append(f"connect: {exc}")
            return
        crowd.admitted += 1
        rotated = [*sentences[index:], *sentences[:index]]
        into = crowd.alone_ms if lone else crowd.crowd_ms
        await talk(http, client, rotated, until, into, crowd, SEED + index)
        await bounded("DELETE /sessions", end_session(http, session_id))
    finally:
        await bounded("closing a client", client.close())


async def run_crowd(
    admission: str, args: argparse.Namespace, sentences: Sequence[Sentence]
) -> Crowd:
    crowd = Crowd(admission)
    state = FakeOllama(token_interval_s=TOKEN_INTERVAL_S)
    log = args.out / f"capacity-{admission}.log"
    extra = ("--admission", admission, "--workers", str(args.workers),
             "--asr-engine", args.asr_engine)  # fmt: skip
    async with (
        fake_ollama(state=state) as (_, ollama_url),
        gateway_process(ollama_url, args.arrivals, log, extra_args=extra) as (_, http),
    ):
        started = time.monotonic()
        end = started + args.alone_s + args.arrivals * args.arrive_every_s + args.after_s
        lone = asyncio.create_task(arrive(http, sentences, end, crowd, 0, lone=True))
        await asyncio.sleep(args.alone_s)
        alone_until = len(crowd.alone_ms)
        others = []
        for index in range(1, args.arrivals + 1):
            others.append(asyncio.create_task(arrive(http, sentences, end, crowd, index)))
            await asyncio.sleep(args.arrive_every_s)
        await asyncio.gather(lone, *others)
        # The lone session's turns after the others came belong to the crowd.
        crowd.crowd_ms.extend(crowd.alone_ms[alone_until:])
        del crowd.alone_ms[alone_until:]
    return crowd


def summary(crowd: Crowd) -> dict[str, Any]:
    alone = percentile(crowd.alone_ms, 95)
    p95 = percentile(crowd.crowd_ms, 95)
    return {
        "admission": crowd.admission,
        "admitted": crowd.admitted,
        "refused": crowd.refused,
        "alone_p95_ms": alone,
        "crowd_p50_ms": percentile(crowd.crowd_ms, 50),
        "crowd_p95_ms": p95,
        "ratio": None if alone is None or p95 is None else p95 / alone,
        "turns": len(crowd.alone_ms) + len(crowd.crowd_ms),
        "errors": len(crowd.errors),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        ["admission", "admitted", "refused", "alone p95", "crowd p50", "crowd p95", "ratio",
         "turns", "errors"],
        [
            [r["admission"], str(r["admitted"]), str(r["refused"]),
             fmt(r["alone_p95_ms"], 0, " ms"), fmt(r["crowd_p50_ms"], 0, " ms"),
             fmt(r["crowd_p95_ms"], 0, " ms"), fmt(r["ratio"], 2, "x"), str(r["turns"]),
             str(r["errors"])]
            for r in rows
        ],
    )  # fmt: skip


def verdict(measured: dict[str, Any]) -> str:
    ratio = measured["ratio"]
    met = ratio is not None and ratio <= TARGET_RATIO and measured["errors"] == 0
    return (
        f"admitted sessions' p95 within {TARGET_RATIO}x of one session's, the rest refused: "
        f"{'met' if met else 'missed'} ({fmt(ratio, 2, 'x')}, {measured['admitted']} admitted, "
        f"{measured['refused']} refused, {measured['errors']} errors)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arrivals", type=int, default=20, help="sessions that try (20)")
    parser.add_argument("--workers", type=int, default=2, help="serve --workers (2)")
    parser.add_argument("--asr-engine", choices=ASR_ENGINES, default=Config().asr_engine,
                        help="serve --asr-engine (the gateway's default)")  # fmt: skip
    parser.add_argument("--arrive-every-s", type=float, default=4.0, help="between arrivals")
    parser.add_argument("--alone-s", type=float, default=40.0, help="the lone session first")
    parser.add_argument("--after-s", type=float, default=60.0, help="after the last arrival")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.arrivals, args.arrive_every_s, args.alone_s, args.after_s = 8, 3.0, 20.0, 20.0
    if args.arrivals < 1 or args.alone_s <= 0:
        raise BenchError("--arrivals and --alone-s must be positive")
    recording = Recording("capacity")
    _, sentences = prepare_sentences(quick=False)
    rows = []
    for admission in ("measured", "off"):
        print(f"{admission}: {args.arrivals} arrivals, one every {args.arrive_every_s:g} s, "
              f"--workers {args.workers}, {args.asr_engine}…", flush=True)  # fmt: skip
        rows.append(summary(asyncio.run(run_crowd(admission, args, sentences))))
    machine = recording.machine_after()
    out_path: Path = args.out / "capacity.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                k: getattr(args, k)
                for k in (
                    "arrivals",
                    "workers",
                    "asr_engine",
                    "arrive_every_s",
                    "alone_s",
                    "after_s",
                )
            },
            "rows": rows,
            "verdict": verdict(rows[0]),
        },
    )
    print(f"\n{machine['cpus_usable']} CPUs, load average {machine['load_average'][0]:.2f}")
    print(table(rows))
    print(f"- {verdict(rows[0])}")
    print(f"\nwrote {out_path}")
    return 0


BENCHMARK = Benchmark(
    name="capacity",
    help="people keep arriving: refused (503 at_capacity) before those talking slow down? "
    "against --admission off",
    add_arguments=add_arguments,
    run=run,
)
