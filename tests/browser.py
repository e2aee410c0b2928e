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
"""

from __future__ import annotations

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
    clip: Path,
    out: Path,
    *,
    lead_s: float = 1.0,
    tail_s: float = 3.0,
    rate: int = 48_000,
) -> Path:
    """A WAV for ``--use-file-for-fake-audio-capture``: ``clip`` (16-bit mono) with silence
    before (the page is still connecting) and after (so the gateway's VAD ends the
    utterance), as 16-bit PCM mono at ``rate`` (48 kHz: what WebRTC captures at)."""
    audio = read_wav(clip)
    with wave.open(str(clip), "rb") as source:
        clip_rate = source.getframerate()
    if clip_rate == 16_000 and rate == 48_000:
        audio = upsample(audio)
    elif clip_rate != rate:
        raise ValueError(f"{clip}: {clip_rate} Hz; only 16 kHz → 48 kHz or the same rate")
    silence = np.zeros
    padded = np.concatenate(
        [
            silence(round(lead_s * rate), np.float32),
            audio,
            silence(round(tail_s * rate), np.float32),
        ]
    )
    pcm = (np.clip(padded, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(out), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(rate)
        sink.writeframes(pcm.tobytes())
    return out
