"""Real-browser helpers: Debian's Chromium, driven by Playwright for Python (async API).

Chromium comes from Debian (``apt-get install chromium``, ``/usr/bin/chromium``); Playwright's
own browser download is never used. A fake microphone plays a WAV file over real WebRTC::

    from tests.browser import chromium, fake_microphone_wav, requires_chromium

    pytestmark = requires_chromium

    async def test_page(tmp_path: Path) -> None:
        wav = fake_microphone_wav(DATA / "weather.wav", tmp_path / "mic.wav")
        async with chromium(tmp_path, fake_audio=wav) as context:
            page = await context.new_page()
            problems = watch_console(page)
            await page.goto(url)
            ...
            assert problems == []

Chromium runs in the test's event loop (``playwright.async_api``), so an aiohttp test server
in the same loop keeps serving while the test awaits the page.

The gateway's voice, as a page plays it, is measured by :data:`VOICE_PROBE` (WebAudio on
the stream of the page's ``<audio>`` element) and read back with :func:`voice_trace` and
friends, all on the page's clock (``performance.now()``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import wave
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    ViewportSize,
    async_playwright,
)

from gateway.testing.loopback import read_wav, upsample
from media import Float32Array

CHROMIUM = Path("/usr/bin/chromium")

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)",
)

# What every launch needs on these machines: headless, and no calls home (the network is
# closed; without these Chromium retries Google's hosts many times over at every start).
BASE_ARGS = (
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
)

Microphone = Literal["allow", "deny", "absent"]

PHONE_VIEWPORT = ViewportSize(width=390, height=844)
DESKTOP_VIEWPORT = ViewportSize(width=1280, height=800)


def chromium_args(
    *,
    fake_audio: Path | None = None,
    loop_audio: bool = False,
    microphone: Microphone = "allow",
    trust_spki: Sequence[str] = (),
) -> list[str]:
    """Command-line flags for Chromium.

    ``fake_audio``: a 16-bit PCM WAV the fake microphone plays from the moment a page opens
    it, once (then silence) unless ``loop_audio``. ``microphone``: ``"allow"`` (a fake device,
    permission granted without a prompt), ``"deny"`` (the device, permission refused) or
    ``"absent"`` (no device at all).
    ``trust_spki``: base64 SHA-256 hashes of public keys (see :func:`spki_hash`) whose
    certificates Chromium accepts unverified.
    """
    args = list(BASE_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    if microphone != "absent":
        args.append("--use-fake-device-for-media-stream")
    if microphone == "allow":
        args.append("--use-fake-ui-for-media-stream")
    if fake_audio is not None:
        # "%noloop": play once; by default Chromium loops the file.
        suffix = "" if loop_audio else "%noloop"
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}{suffix}")
    if trust_spki:
        args.append(f"--ignore-certificate-errors-spki-list={','.join(trust_spki)}")
    return args


def spki_hash(certificate_pem: Path) -> str:
    """What ``--ignore-certificate-errors-spki-list`` takes for the certificate in the file:
    base64 of the SHA-256 of its SubjectPublicKeyInfo. Pass the gateway's server
    certificate (Chromium matches the chain the server sends, which holds no CA)."""
    cert = x509.load_pem_x509_certificate(certificate_pem.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


@asynccontextmanager
async def chromium(
    tmp_path: Path,
    *,
    fake_audio: Path | None = None,
    loop_audio: bool = False,
    microphone: Microphone = "allow",
    ignore_https_errors: bool = False,
    trust_certificates: Sequence[Path] = (),
    viewport: ViewportSize = DESKTOP_VIEWPORT,
    **context_options: Any,
) -> AsyncIterator[BrowserContext]:
    """A headless Chromium with a fresh profile under ``tmp_path``, as one browser context.

    ``ignore_https_errors`` accepts any certificate; ``trust_certificates`` accepts only the
    certificates (PEM files, e.g. the gateway's ``server.pem``) whose keys are listed.
    ``context_options`` go to Playwright's ``launch_persistent_context`` (``is_mobile``,
    ``color_scheme``, ``base_url``…).
    """
    profile = tmp_path / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    args = chromium_args(
        fake_audio=fake_audio,
        loop_audio=loop_audio,
        microphone=microphone,
        trust_spki=[spki_hash(path) for path in trust_certificates],
    )
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            ignore_https_errors=ignore_https_errors,
            viewport=viewport,
            **context_options,
        )
        try:
            yield context
        finally:
            await context.close()


def watch_console(page: Page) -> list[str]:
    """Collects the page's console errors and uncaught exceptions (CSP violations among
    them) as text, for a test to assert empty at the end."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            # For a failed load, the location is the resource's URL: worth knowing which.
            where = message.location.get("url", "")
            problems.append(f"console: {message.text} ({where})" if where else message.text)

    def on_page_error(error: Error) -> None:
        problems.append(f"page error: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    return problems


def fake_microphone_wav(
    clip: Path | Sequence[Path],
    out: Path,
    *,
    lead_s: float = 1.0,
    gap_s: float = 3.0,
    tail_s: float = 3.0,
    rate: int = 48_000,
) -> Path:
    """A WAV for ``--use-file-for-fake-audio-capture``: ``clip`` (16-bit mono) with silence
    before (the page is still connecting) and after (so the gateway's VAD ends the
    utterance), as 16-bit PCM mono at ``rate`` (48 kHz: what WebRTC captures at).

    Several clips are several utterances, ``gap_s`` of silence between one's end and the
    next one's start (see :func:`clip_seconds` to place them)."""
    clips = [clip] if isinstance(clip, Path) else list(clip)
    silence = np.zeros
    parts = [silence(round(lead_s * rate), np.float32)]
    for index, path in enumerate(clips):
        if index:
            parts.append(silence(round(gap_s * rate), np.float32))
        parts.append(_clip_at(path, rate))
    parts.append(silence(round(tail_s * rate), np.float32))
    padded = np.concatenate(parts)
    pcm = (np.clip(padded, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(out), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(rate)
        sink.writeframes(pcm.tobytes())
    return out


def clip_seconds(clip: Path) -> float:
    """How long a WAV clip lasts."""
    with wave.open(str(clip), "rb") as source:
        return source.getnframes() / source.getframerate()


def _clip_at(clip: Path, rate: int) -> Float32Array:
    audio = read_wav(clip)
    with wave.open(str(clip), "rb") as source:
        clip_rate = source.getframerate()
    if clip_rate == 16_000 and rate == 48_000:
        return upsample(audio)
    if clip_rate != rate:
        raise ValueError(f"{clip}: {clip_rate} Hz; only 16 kHz → 48 kHz or the same rate")
    return audio


# --- the gateway's voice, as the page plays it ---

# Test-only, given {audio, indicator} CSS selectors: what the page's <audio> element plays
# (the gateway's voice) measured with WebAudio (headless Chromium plays to a null sink, but
# the stream still carries the decoded audio, muted element or not): an RMS level every
# 50 ms; the microphone's too, as sent (with RECORD_PEERS); and each change of the
# speaking indicator (its data-state, else its text).
VOICE_PROBE = """async ({ audio, indicator }) => {
  const stream = document.querySelector(audio).srcObject;
  if (!(stream instanceof MediaStream) || stream.getAudioTracks().length === 0) {
    throw new Error("the page's audio element has no remote audio track");
  }
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaStreamSource(stream).connect(analyser);
  const rms = (node, samples) => {
    node.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    return Math.sqrt(sum / samples.length);
  };
  const samples = new Float32Array(analyser.fftSize);
  const probe = { levels: [], mic: [], changes: [] };
  // And what the page sends, when RECORD_PEERS kept its peer connection.
  const sent = window.peers?.at(-1)?.getSenders().find((s) => s.track?.kind === "audio")?.track;
  const mic = sent ? context.createAnalyser() : null;
  if (sent) context.createMediaStreamSource(new MediaStream([sent])).connect(mic);
  setInterval(() => {
    const now = performance.now();
    probe.levels.push([now, rms(analyser, samples)]);
    if (mic) probe.mic.push([now, rms(mic, samples)]);
  }, 50);
  const shown = document.querySelector(indicator);
  const state = () => shown.dataset.state ?? shown.textContent.trim();
  new MutationObserver(() => probe.changes.push([performance.now(), state()])).observe(shown, {
    attributes: true, childList: true, characterData: true, subtree: true,
  });
  window.voiceProbe = probe;
  return context.state;
}"""

# Test-only, before the page loads: keeps its peer connections, for their statistics.
RECORD_PEERS = """(() => {
  const Original = window.RTCPeerConnection;
  window.peers = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.peers.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();"""

# An answer that takes Piper's default voice about 15 s to say: long enough to interrupt.
LONG_REPLY = " ".join(
    [
        "Paris has many museums worth a visit, and the Louvre is the largest of them.",
        "The Orsay museum holds impressionist paintings in an old railway station.",
        "The Pompidou centre shows modern art behind its colourful pipes.",
        "Smaller museums are quieter, and some of them are free on Sundays.",
    ]
)
SILENT = 0.003  # RMS: about -50 dBFS; the voice's quietest syllables are above 0.01
# After the page hears of a cut, the voice falls silent once what the browser had buffered
# has played: measured 150-600 ms on two busy cores (a 100-250 ms jitter buffer, then
# WebAudio's own buffering); and stays so (the next reply's voice is seconds away).
SILENT_WITHIN_MS = 1200
SILENT_FOR_MS = 500
# An audio element playing: HAVE_ENOUGH_DATA, the remote track live ("time" is ignored).
PLAYING = {"paused": False, "muted": False, "time": 0, "ready": 4, "track": "live"}


async def start_voice_probe(page: Page, audio: str, indicator: str) -> None:
    """Starts :data:`VOICE_PROBE` on the ``audio`` element's stream, once it has a track."""
    state = await page.evaluate(VOICE_PROBE, {"audio": audio, "indicator": indicator})
    assert state == "running", f"the probe's AudioContext is {state}"


async def voice_trace(page: Page, start_ms: float, end_ms: float) -> list[tuple[float, float]]:
    """(page time, RMS level) as the probe measured them between two page times."""
    trace = await page.evaluate(
        """([a, b]) => voiceProbe.levels.filter(([t]) => t >= a && t <= b)""",
        [start_ms, end_ms],
    )
    return [(float(t), float(level)) for t, level in trace]


async def mic_trace(page: Page, start_ms: float, end_ms: float) -> list[tuple[float, float]]:
    """(page time, RMS level) of what the page's microphone sent (see :data:`VOICE_PROBE`)."""
    trace = await page.evaluate(
        """([a, b]) => voiceProbe.mic.filter(([t]) => t >= a && t <= b)""",
        [start_ms, end_ms],
    )
    return [(float(t), float(level)) for t, level in trace]


async def voice_levels(page: Page, start_ms: float, end_ms: float) -> list[float]:
    """The voice's RMS levels the probe measured between two page times."""
    return [level for _, level in await voice_trace(page, start_ms, end_ms)]


async def voice_changes(page: Page) -> list[tuple[float, str]]:
    """(page time, new state) of the speaking indicator, since the probe started."""
    changes = await page.evaluate("() => voiceProbe.changes")
    return [(float(t), str(state)) for t, state in changes]


def silence_onset(trace: list[tuple[float, float]], hold_ms: float) -> float | None:
    """When the trace falls silent for good, if it then stays so for ``hold_ms`` (to its
    end), else None."""
    onset: float | None = None
    for t, level in trace:
        if level >= SILENT:
            onset = None
        elif onset is None:
            onset = t
    if onset is None or trace[-1][0] - onset < hold_ms - 100:  # sampled every 50 ms
        return None
    return onset


async def falls_silent(page: Page, cut: float) -> float:
    """Waits, then returns how long after page time ``cut`` the voice fell silent for good;
    fails the test if it had not within :data:`SILENT_WITHIN_MS`."""
    end = cut + SILENT_WITHIN_MS + SILENT_FOR_MS
    await wait_page_time(page, end)
    trace = await voice_trace(page, cut, end)
    onset = silence_onset(trace, SILENT_FOR_MS)
    assert onset is not None, [round(level, 4) for _, level in trace]
    assert onset - cut <= SILENT_WITHIN_MS, onset - cut
    return onset - cut


async def jitter_buffer_ms(page: Page) -> float:
    """The page's audio jitter buffer delay, on average so far (needs :data:`RECORD_PEERS`)."""
    delay = await page.evaluate(
        """async () => {
          let ms = 0;
          (await window.peers.at(-1).getStats()).forEach((s) => {
            if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
              ms = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
            }
          });
          return ms;
        }"""
    )
    return float(delay)


async def page_now(page: Page) -> float:
    return float(await page.evaluate("() => performance.now()"))


async def wait_page_time(page: Page, until_ms: float) -> None:
    await asyncio.sleep(max(0.0, until_ms - await page_now(page)) / 1000)


async def playback(page: Page, audio: str) -> dict[str, object]:
    """The state of the ``audio`` element and of the remote track it plays (compare with
    :data:`PLAYING`)."""
    result = await page.evaluate(
        """(selector) => {
          const element = document.querySelector(selector);
          const track = element.srcObject?.getAudioTracks()[0];
          return { paused: element.paused, muted: element.muted, time: element.currentTime,
                   ready: element.readyState, track: track?.readyState ?? null };
        }""",
        audio,
    )
    assert isinstance(result, dict)
    return result
