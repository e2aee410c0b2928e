"""Gateway memory while a client offers a camera it does not need.

Serves the real application on 127.0.0.1 (no TLS, its configured ASR engine, a fake Ollama),
connects one aiortc client that sends its microphone (silence) and aiortc's 640x480
``VideoStreamTrack``, and samples this process's resident memory (``VmRSS``) every second
for ``--seconds``. Gateway and client share the process, so any frames the gateway decodes
and keeps show up here. aiortc decodes every video frame it receives into an unbounded queue
that nothing reads: before the gateway declined video in its answer, one session grew RSS by
~300 MB in 12 s.

Run as ``python -m scripts.video_rss [--seconds 60]``. Prints the answer's video direction and
RSS at the start, end and peak; exits 1 when RSS rose more than ``--limit-mb`` above where it
started (after ``--warmup``), 2 when the session could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web
from aiortc.mediastreams import VideoStreamTrack

from bench.transcript import BenchError, bounded, connect, end_session
from gateway.http.app import build_app
from gateway.ops.config import Config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import fake_ollama

SECONDS = 60
WARMUP_S = 5.0
LIMIT_MB = 20.0
MB = 1024 * 1024
_VMRSS = re.compile(r"^VmRSS:\s+(\d+) kB$", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    video: str  # the video m-line's direction in the gateway's answer ("inactive" when declined)
    samples: Sequence[int]  # RSS in bytes, once a second, the first after the warm-up

    @property
    def growth(self) -> int:
        return max(self.samples) - self.samples[0]


def rss_bytes(status: str) -> int:
    """Resident memory from the text of ``/proc/<pid>/status``."""
    match = _VMRSS.search(status)
    if match is None:
        raise ValueError("no VmRSS line in /proc/self/status")
    return int(match.group(1)) * 1024


def current_rss() -> int:
    return rss_bytes(Path("/proc/self/status").read_text())


def video_direction(sdp: str) -> str:
    """The direction of the first m=video section (port 0 counts as declined)."""
    for part in sdp.split("\r\nm=")[1:]:
        if part.startswith("video "):
            if part.split(" ", 2)[1] == "0":
                return "inactive (port 0)"
            for line in reversed(part.split("\r\n")):
                if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
                    return line[2:]
            return "no direction"
    return "no video section"


async def measure(seconds: int, warmup_s: float) -> Run:
    async with fake_ollama() as (_, ollama_url):
        config = Config(no_tls=True, ollama_host=ollama_url, tts_engine="none")
        runner = web.AppRunner(build_app(config))
        await runner.setup()
        client = LoopbackClient()
        camera = VideoStreamTrack()
        client.pc.addTrack(camera)
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with ClientSession(url, timeout=ClientTimeout(total=30)) as http:
                session_id = await connect(http, client)
                video = video_direction(client.pc.remoteDescription.sdp)
                print(f"session up; the answer's video is {video}", flush=True)
                await asyncio.sleep(warmup_s)
                samples = [current_rss()]
                start = time.monotonic()
                for second in range(1, seconds + 1):
                    await asyncio.sleep(max(0.0, start + second - time.monotonic()))
                    samples.append(current_rss())
                    if second % 10 == 0 or second == seconds:
                        print(f"  {second:4d} s  RSS {samples[-1] / MB:7.1f} MB", flush=True)
                await bounded("DELETE /sessions", end_session(http, session_id))
        finally:
            camera.stop()
            await bounded("closing the client", client.close())
            await bounded("stopping the gateway", runner.cleanup())
    return Run(video, samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=SECONDS, help="default %(default)s")
    parser.add_argument(
        "--warmup", type=float, default=WARMUP_S, help="seconds before the first sample"
    )
    parser.add_argument(
        "--limit-mb", type=float, default=LIMIT_MB, help="allowed growth (default %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run = asyncio.run(measure(max(args.seconds, 1), max(args.warmup, 0.0)))
    except (BenchError, OSError, TimeoutError) as exc:
        print(f"video_rss: the session could not be set up: {exc}", file=sys.stderr)
        return 2
    growth = run.growth / MB
    print(
        f"RSS over {len(run.samples) - 1} s with a camera offered (answer: video {run.video}):"
        f" start {run.samples[0] / MB:.1f} MB, end {run.samples[-1] / MB:.1f} MB,"
        f" max {max(run.samples) / MB:.1f} MB; grew {growth:+.1f} MB (limit {args.limit_mb:g} MB)"
    )
    ok = growth <= args.limit_mb
    print("PASS" if ok else "FAIL: the gateway's memory grows while a camera is offered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
