"""Set-up: POST /offer → answer → ICE → DTLS → data channel open → ``session.ready``.

Against the real gateway app on 127.0.0.1 and, as the baseline in the same run and on the
same event loop, a bare aiortc server written as aiortc's own example server is (POST
/offer, setRemoteDescription / createAnswer / setLocalDescription, the audio into a
MediaBlackhole; no validation, limits, sessions or VAD), which sends ``session.ready`` as
soon as the client's data channel arrives. Both are given no ICE servers (the gateway's
default; aiortc's own default, a public STUN server, would stall gathering offline).

The client is ``gateway.testing.loopback.LoopbackClient`` (a microphone track playing silence and an
``events`` data channel, as a browser opens them). Every time is taken at the client, from
just before the POST: the answer received, ICE connected, the peer connection connected
(DTLS done), the data channel open, and ``session.ready`` received. The client's own offer
(candidate gathering) comes before and is reported apart. Sessions run one at a time,
alternating between the two servers, then a few at once (``--concurrent``), also
alternating by round; each session is ended (DELETE) once measured.

The gateway's offer rate limit and per-address session limit are raised for the run: one
client address opens every session here. Its ASR engine is a stub, since silence never
reaches ASR; the VAD runs on every session's audio as always.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    percentile,
    write_json,
)
from bench.transcript import bounded, received_at
from gateway.http.app import build_app
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import fake_ollama
from media import Float32Array
from media.asr.base import Transcription, transcribe_each

SESSIONS = 30
QUICK_SESSIONS = 10
CONCURRENT = 4
ROUNDS = 5
QUICK_ROUNDS = 2
# Each stage of one set-up must finish within this (loopback takes well under a second).
STAGE_TIMEOUT_S = 15.0
STAGES = ("answer", "ice", "connected", "open", "ready")
STAGE_NAMES = {
    "answer": "POST /offer → answer",
    "ice": "→ ICE connected",
    "connected": "→ DTLS connected",
    "open": "→ data channel open",
    "ready": "→ session.ready",
}
GATEWAY = "gateway"
BARE = "bare aiortc"


class SetupError(Exception):
    pass


@dataclass
class Setup:
    server: str
    mode: str  # "sequential" | "concurrent"
    offer_ms: float = 0.0  # the client's createOffer + gathering, before the POST
    stages: dict[str, float] = field(default_factory=dict)  # ms after the POST was sent
    error: str | None = None


@dataclass
class Opened:
    """A measured session, kept open until its round has finished."""

    setup: Setup
    client: LoopbackClient
    session_id: str | None = None


class _SilentASR:
    """The gateway needs an engine; silence never reaches one."""

    name = "openai-whisper"
    model = "none (set-up only)"
    device = "cpu"
    languages = frozenset({"en"})

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        return Transcription(())

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        return transcribe_each(self, audios, language)


# --- the baseline: aiortc's example server, minus its media relay ---


@dataclass
class _BarePeer:
    pc: Any  # RTCPeerConnection (untyped)
    sink: Any  # MediaBlackhole


BARE_PEERS = web.AppKey("bare_peers", dict[str, _BarePeer])


async def _bare_offer(request: web.Request) -> web.Response:
    params = await request.json()
    offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer_id = secrets.token_hex(8)
    peer = request.app[BARE_PEERS][peer_id] = _BarePeer(pc, MediaBlackhole())

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        channel.send(json.dumps({"type": "session.ready", "session_id": peer_id}))

    @pc.on("track")
    def on_track(track: Any) -> None:
        peer.sink.addTrack(track)

    await pc.setRemoteDescription(offer)
    await peer.sink.start()
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response(
        {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session_id": peer_id}
    )


async def _bare_delete(request: web.Request) -> web.Response:
    peer = request.app[BARE_PEERS].pop(request.match_info["id"], None)
    if peer is None:
        raise web.HTTPNotFound()
    await _close_bare(peer)
    return web.Response(status=204)


async def _close_bare(peer: _BarePeer) -> None:
    await peer.sink.stop()
    await peer.pc.close()


async def _bare_peers(app: web.Application) -> AsyncIterator[None]:
    peers: dict[str, _BarePeer] = {}
    app[BARE_PEERS] = peers
    yield
    for peer in list(peers.values()):
        await _close_bare(peer)
    peers.clear()


def bare_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_bare_peers)
    app.router.add_post("/offer", _bare_offer)
    app.router.add_delete("/sessions/{id}", _bare_delete)
    return app


# --- one set-up, measured at the client ---


async def open_one(http: ClientSession, server: str, mode: str) -> Opened:
    client = LoopbackClient()
    opened = Opened(Setup(server, mode), client)
    marks: dict[str, float] = {}
    pc = client.pc

    def on_ice() -> None:
        if pc.iceConnectionState in ("connected", "completed"):
            marks.setdefault("ice", time.monotonic())

    def on_connection() -> None:
        if pc.connectionState == "connected":
            marks.setdefault("connected", time.monotonic())

    def on_open() -> None:
        marks.setdefault("open", time.monotonic())

    pc.on("iceconnectionstatechange", on_ice)
    pc.on("connectionstatechange", on_connection)
    client.channel.on("open", on_open)
    try:
        before_offer = time.monotonic()
        sdp = await asyncio.wait_for(client.offer(), STAGE_TIMEOUT_S)
        posted = time.monotonic()
        opened.setup.offer_ms = 1000 * (posted - before_offer)
        async with http.post("/offer", json={"sdp": sdp, "type": "offer"}) as response:
            if response.status != 200:
                raise SetupError(f"POST /offer: {response.status} {await response.text()}")
            answer: dict[str, Any] = await response.json()
        marks["answer"] = time.monotonic()
        opened.session_id = str(answer["session_id"])
        await asyncio.wait_for(client.accept(answer), STAGE_TIMEOUT_S)
        ready = await client.next_event("session.ready", within=STAGE_TIMEOUT_S)
        marks["ready"] = received_at(client, ready)
        opened.setup.stages = {k: 1000 * (marks[k] - posted) for k in STAGES if k in marks}
    except (SetupError, TimeoutError, OSError, ValueError, KeyError) as exc:
        opened.setup.error = f"{type(exc).__name__}: {exc}"
    return opened


async def close_one(http: ClientSession, opened: Opened) -> None:
    if opened.session_id is not None:

        async def delete() -> None:
            async with http.delete(f"/sessions/{opened.session_id}") as response:
                if response.status != 204:
                    raise SetupError(f"DELETE: {response.status}")

        await bounded("DELETE /sessions", delete())
    await bounded("closing the client", opened.client.close())


async def measure(
    servers: dict[str, ClientSession], sessions: int, concurrent: int, rounds: int
) -> list[Setup]:
    results: list[Setup] = []
    names = list(servers)
    for i in range(sessions):
        # Alternate which server goes first, so neither always follows the other's close.
        for name in names if i % 2 == 0 else names[::-1]:
            opened = await open_one(servers[name], name, "sequential")
            results.append(opened.setup)
            await close_one(servers[name], opened)
    for r in range(rounds if concurrent > 1 else 0):
        for name in names if r % 2 == 0 else names[::-1]:
            http = servers[name]
            batch = await asyncio.gather(
                *(open_one(http, name, "concurrent") for _ in range(concurrent))
            )
            results += [o.setup for o in batch]
            await asyncio.gather(*(close_one(http, o) for o in batch))
    return results


async def serve_both(sessions: int, concurrent: int, rounds: int) -> list[Setup]:
    async with fake_ollama() as (_, ollama_url):
        config = Config(
            admission="off",
            no_tls=True,
            tts_engine="none",
            ollama_host=ollama_url,
            offer_rate=10_000,
            sessions_per_client=1000,
            max_sessions=max(Config().max_sessions, concurrent),
        )
        runners = [
            web.AppRunner(build_app(config, engine=_SilentASR())),
            web.AppRunner(bare_app()),
        ]
        try:
            urls = []
            for runner in runners:
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
            timeout = ClientTimeout(total=STAGE_TIMEOUT_S)
            async with (
                ClientSession(urls[0], timeout=timeout) as gateway,
                ClientSession(urls[1], timeout=timeout) as bare,
            ):
                return await measure({GATEWAY: gateway, BARE: bare}, sessions, concurrent, rounds)
        finally:
            for runner in reversed(runners):
                await bounded("closing a server", runner.cleanup())


# --- summary ---


def summarise(results: Sequence[Setup]) -> list[dict[str, Any]]:
    out = []
    for mode in ("sequential", "concurrent"):
        for stage in ("offer", *STAGES):
            row: dict[str, Any] = {"mode": mode, "stage": stage}
            for server in (GATEWAY, BARE):
                values = [
                    s.offer_ms if stage == "offer" else s.stages[stage]
                    for s in results
                    if s.mode == mode and s.server == server and s.error is None
                    if stage == "offer" or stage in s.stages
                ]
                row[server] = {
                    "n": len(values),
                    "p50": percentile(values, 50),
                    "p95": percentile(values, 95),
                }
            gateway, bare = row[GATEWAY]["p50"], row[BARE]["p50"]
            row["ratio_p50"] = gateway / bare if gateway is not None and bare else None
            if row[GATEWAY]["n"] or row[BARE]["n"]:
                out.append(row)
    return out


def table(summary: Sequence[dict[str, Any]]) -> str:
    header = ("mode", "stage", "gateway p50", "p95", "bare aiortc p50", "p95", "gateway / bare")
    rows = [
        [
            s["mode"],
            "client offer (before POST)" if s["stage"] == "offer" else STAGE_NAMES[s["stage"]],
            fmt(s[GATEWAY]["p50"], 1, " ms"),
            fmt(s[GATEWAY]["p95"], 1, " ms"),
            fmt(s[BARE]["p50"], 1, " ms"),
            fmt(s[BARE]["p95"], 1, " ms"),
            fmt(s["ratio_p50"], 2),
        ]
        for s in summary
    ]
    return markdown_table(header, rows)


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sessions",
        type=int,
        default=None,
        metavar="N",
        help=f"sequential sessions per server (default {SESSIONS}, {QUICK_SESSIONS} with --quick)",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=CONCURRENT,
        metavar="K",
        help="sessions opened at once in each concurrent round (default %(default)s; 1 for none)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="R",
        help=f"concurrent rounds per server (default {ROUNDS}, {QUICK_ROUNDS} with --quick)",
    )


def run(args: argparse.Namespace) -> int:
    sessions: int = args.sessions or (QUICK_SESSIONS if args.quick else SESSIONS)
    rounds: int = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    concurrent: int = max(args.concurrent, 1)
    recording = Recording("setup")
    print(
        f"{sessions} sessions one at a time and {rounds} round(s) of {concurrent} at once, "
        "per server…",
        flush=True,
    )
    results = asyncio.run(serve_both(sessions, concurrent, rounds))
    summary = summarise(results)
    errors = [s for s in results if s.error]

    machine = recording.machine_after()
    out_path: Path = args.out / "setup.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "sessions": sessions,
                "concurrent": concurrent,
                "rounds": rounds,
                "ice_servers": [],
                "baseline": "aiortc example-style server, same process and loop",
                "times_from": "just before the client's POST /offer",
            },
            "summary": summary,
            "records": [
                {
                    "server": s.server,
                    "mode": s.mode,
                    "offer_ms": s.offer_ms,
                    "stages_ms": s.stages,
                    "error": s.error,
                }
                for s in results
            ],
        },
    )

    print()
    print(
        f"times from just before POST /offer, at the client; {machine['cpus_usable']} CPUs, "
        f"load average {machine['load_average'][0]:.2f}"
    )
    print(table(summary))
    for s in errors:
        print(f"- {s.server} ({s.mode}): {s.error}")
    print(f"\nwrote {out_path}")
    return 1 if errors else 0


BENCHMARK = Benchmark(
    name="setup",
    help="session set-up: POST /offer → answer → ICE → data channel open → session.ready, "
    "against a bare aiortc server",
    add_arguments=add_arguments,
    run=run,
)
