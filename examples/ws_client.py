#!/usr/bin/env python3
"""Talk to the Local AI Gateway over ``/ws`` with raw PCM audio: what a Raspberry Pi or any
device without WebRTC does.

    python examples/ws_client.py question.wav                  # wss://localhost:8001/ws
    python examples/ws_client.py question.wav --out reply.wav  # also the spoken reply
    python examples/ws_client.py --mic                         # needs `pip install sounddevice`
    python examples/ws_client.py q.wav --url wss://10.0.0.1:8001/ws --ca certs/rootCA.pem
    GATEWAY_TOKEN=... python examples/ws_client.py q.wav        # a gateway with --auth

It streams the audio as s16le mono binary frames at real-time pace (20 ms each), prints
``transcript.final`` and the reply as it streams, and with ``--out`` asks for spoken
replies and writes the reply's audio frames to a WAV. A WAV at 8, 16, 24 or 48 kHz in
16-bit is sent as it is (at its own rate, downmixed to mono, with the standard library
only); any other file or rate is converted with PyAV (``pip install av``) when present.

Needs ``aiohttp``; ``sounddevice`` only for ``--mic``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

RATES = (8_000, 16_000, 24_000, 48_000)  # what /ws audio may use
FRAME_MS = 20


@dataclass
class Outcome:
    """What came back, and whether the exchange is over."""

    spoken: bool = False  # replies are spoken (the gateway has a voice and said yes)
    transcripts: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # the spoken replies, s16le mono
    replies_pending: set[str] = field(default_factory=set)
    audio_pending: set[str] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


# --- audio in ---


def read_audio(path: Path, rate: int | None) -> tuple[bytes, int]:
    """(s16le mono PCM, its rate) from ``path``; at ``rate`` when given."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, own_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
        if width == 2 and own_rate in RATES and rate in (None, own_rate):
            return _mono(data, channels), own_rate
    except (wave.Error, EOFError):
        pass  # not a PCM WAV: PyAV may read it
    return _convert(path, rate or 16_000), rate or 16_000


def _mono(data: bytes, channels: int) -> bytes:
    samples = array.array("h")
    samples.frombytes(data)
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    if channels > 1:
        frames = len(samples) // channels
        samples = array.array(
            "h",
            (sum(samples[i * channels : (i + 1) * channels]) // channels for i in range(frames)),
        )
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _convert(path: Path, rate: int) -> bytes:
    try:
        import av
    except ImportError:
        sys.exit(
            f"{path}: not a 16-bit WAV at {', '.join(map(str, RATES))} Hz; install PyAV "
            "(pip install av) to convert it, or convert it first (e.g. with ffmpeg -ac 1 -ar "
            "16000 -sample_fmt s16)"
        )
    out = bytearray()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for converted in resampler.resample(frame):
                out += converted.to_ndarray().tobytes()
    for converted in resampler.resample(None):
        out += converted.to_ndarray().tobytes()
    return bytes(out)


async def send_pcm(ws: aiohttp.ClientWebSocketResponse, pcm: bytes, rate: int) -> None:
    """Frames of FRAME_MS at real-time pace: frame n is due at start + n * FRAME_MS (a fixed
    sleep would drift)."""
    step = rate * FRAME_MS // 1000 * 2
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), step)):
        delay = start + n * FRAME_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send_bytes(pcm[offset : offset + step])


def microphone() -> Any:
    """The sounddevice module; exits with what to install when it is missing."""
    try:
        import sounddevice  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.exit(
            "--mic needs the optional sounddevice package (and PortAudio): "
            "pip install sounddevice; or give a WAV file instead"
        )
    except OSError as exc:  # installed, but the PortAudio library is missing
        sys.exit(f"--mic: sounddevice cannot load PortAudio: {exc}")
    return sounddevice


async def send_microphone(ws: aiohttp.ClientWebSocketResponse, rate: int, seconds: float) -> None:
    sounddevice = microphone()
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=50)  # 1 s; the oldest goes first

    def captured(data: Any, frames: int, when: Any, status: Any) -> None:
        loop.call_soon_threadsafe(_put_newest, blocks, bytes(data))

    with sounddevice.RawInputStream(
        samplerate=rate,
        channels=1,
        dtype="int16",
        blocksize=rate * FRAME_MS // 1000,
        callback=captured,
    ):
        print(f"listening for {seconds:.0f} s; press Ctrl+C to stop", file=sys.stderr)
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await ws.send_bytes(await asyncio.wait_for(blocks.get(), left))


def _put_newest(queue: asyncio.Queue[bytes], data: bytes) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(data)


# --- events out ---


async def receive(ws: aiohttp.ClientWebSocketResponse, outcome: Outcome) -> None:
    async for message in ws:
        if message.type is aiohttp.WSMsgType.BINARY:
            outcome.audio += message.data
            continue
        if message.type is not aiohttp.WSMsgType.TEXT:
            break
        event: dict[str, Any] = json.loads(message.data)
        kind = event.get("type")
        if kind == "transcript.final":
            outcome.transcripts.append(event["text"])
            print(f"you:     {event['text']}", flush=True)
        elif kind == "reply.started":
            outcome.replies_pending.add(event["reply_id"])
            if outcome.spoken:
                outcome.audio_pending.add(event["reply_id"])
            print("gateway: ", end="", flush=True)
        elif kind == "reply.delta":
            print(event["text"], end="", flush=True)
        elif kind in ("reply.done", "reply.cancelled"):
            print(f" [{event.get('reason')}]" if kind == "reply.cancelled" else "", flush=True)
            if kind == "reply.done":
                outcome.replies.append(event["text"])
            outcome.replies_pending.discard(event["reply_id"])
            if kind == "reply.cancelled":
                outcome.audio_pending.discard(event["reply_id"])
        elif kind == "reply.audio.done":
            outcome.audio_pending.discard(event["reply_id"])
        elif kind == "error":
            outcome.errors.append(event)
            print(f"\nerror:   {event['code']}: {event['message']}", file=sys.stderr, flush=True)
            if event["code"] in ("not_supported", "tts_failed", "tts_unavailable"):
                outcome.audio_pending.clear()  # no voice after all, or not for this reply
            if event["code"] == "not_supported":
                outcome.spoken = False
        if outcome.replies and not (outcome.replies_pending or outcome.audio_pending):
            outcome.finished.set()


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


# --- the session ---


async def run(args: argparse.Namespace) -> int:
    if args.wav is not None:
        pcm, rate = read_audio(args.wav, args.rate)
    else:
        microphone()  # before connecting: say at once what is missing
        pcm, rate = b"", args.rate or 16_000
    ssl_context: ssl.SSLContext | bool = True
    if args.ca is not None:
        ssl_context = ssl.create_default_context(cafile=str(args.ca))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    outcome = Outcome()
    try:
        await converse(args, outcome, pcm, rate, headers, ssl_context)
    finally:  # Ctrl+C too: keep what was said
        if args.out is not None and outcome.audio:
            write_wav(args.out, bytes(outcome.audio), rate)
            seconds = len(outcome.audio) / 2 / rate
            print(f"spoken reply: {seconds:.1f} s → {args.out}", file=sys.stderr)
    if not outcome.transcripts:
        print("no transcript came back", file=sys.stderr)
        return 1
    if args.wav is not None and not outcome.finished.is_set():
        print(f"no complete reply within {args.timeout:.0f} s", file=sys.stderr)
        return 1
    return 0


async def converse(
    args: argparse.Namespace,
    outcome: Outcome,
    pcm: bytes,
    rate: int,
    headers: dict[str, str],
    ssl_context: ssl.SSLContext | bool,
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.ws_connect(args.url, headers=headers, ssl=ssl_context, heartbeat=20) as ws,
    ):
        ready = json.loads((await ws.receive(timeout=10)).data)
        if ready.get("type") != "session.ready":
            raise SystemExit(f"unexpected first message: {ready}")
        has_voice = bool(ready.get("tts", {}).get("engine"))
        speak = args.out is not None or args.speak
        if speak and not has_voice:
            print(
                "the gateway has no voice (--tts-engine none): text replies only", file=sys.stderr
            )
        outcome.spoken = speak and has_voice
        update: dict[str, Any] = {"type": "session.update", "sample_rate": rate}
        if outcome.spoken:
            update["tts"] = True
        await ws.send_json(update)
        receiver = asyncio.create_task(receive(ws, outcome))
        try:
            if args.wav is not None:
                await send_pcm(ws, pcm, rate)
                # A moment of silence ends the turn at once (the gateway would also take a
                # stream that stops as silence, after a short grace).
                await send_pcm(ws, bytes(rate * 2 * args.tail_ms // 1000), rate)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(outcome.finished.wait(), args.timeout)
            else:
                await send_microphone(ws, rate, args.seconds)
                with contextlib.suppress(TimeoutError):  # the last reply, if one is coming
                    await asyncio.wait_for(outcome.finished.wait(), 5)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Speak to the Local AI Gateway over /ws with PCM audio (a WAV or the mic)."
    )
    parser.add_argument(
        "wav", nargs="?", type=Path, help="audio file to say (WAV, or any with PyAV)"
    )
    parser.add_argument("--mic", action="store_true", help="speak into the default microphone")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long --mic listens")
    parser.add_argument("--url", default="wss://localhost:8001/ws", help="the gateway's /ws")
    parser.add_argument("--ca", type=Path, help="CA certificate to trust (the gateway's ca.pem)")
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="API key or JWT, when the gateway runs with --auth (default: $GATEWAY_TOKEN)",
    )
    parser.add_argument("--rate", type=int, choices=RATES, help="sample rate to send and receive")
    parser.add_argument("--out", type=Path, help="write the spoken reply here (asks for speech)")
    parser.add_argument("--speak", action="store_true", help="ask for spoken replies")
    parser.add_argument("--tail-ms", type=int, default=1000, help="silence sent after the file")
    parser.add_argument("--timeout", type=float, default=60.0, help="wait for the reply, s")
    args = parser.parse_args()
    if (args.wav is None) == (not args.mic):
        parser.error("give an audio file or --mic (one of them)")
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(130)
    except aiohttp.WSServerHandshakeError as exc:
        sys.exit(f"the gateway refused the WebSocket: {exc.status} {exc.message}")
    except (aiohttp.ClientError, OSError) as exc:
        sys.exit(f"cannot talk to {args.url}: {exc}")


if __name__ == "__main__":
    main()
