"""The Nuxt example (``examples/nuxt``) in a real browser, on another origin than the gateway.

The example is built with npm (``npm ci`` when its packages are missing or stale, then
``nuxt generate``, skipped while ``.output/public`` is newer than every source), served as
static files by a tiny aiohttp server on 127.0.0.1, and pointed at the gateway on another
port with ``?gateway=``. So every request the page makes to the gateway is cross-origin:
the preflights, ``Authorization``, reading ``Location`` and the ``DELETE`` all go through
the gateway's CORS, as they would for a Nuxt app on a Mac talking to the PC. The last test
has Chromium take the page for a public site, as a deployed one would be (Local Network
Access).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, async_playwright, expect
from pytest_aiohttp import AiohttpServer

from gateway.http.state import SESSIONS
from gateway.testing.loopback import DATA
from tests.browser import (
    CHROMIUM,
    LONG_REPLY,
    PLAYING,
    chromium,
    chromium_args,
    fake_microphone_wav,
    falls_silent,
    playback,
    requires_chromium,
    start_voice_probe,
    voice_changes,
    voice_levels,
    wait_page_time,
    watch_console,
)
from tests.conftest import GatewayFactory, Ollama
from tests.npm import exclusive, packages_are_fresh

NUXT_DIR = Path(__file__).resolve().parents[1] / "examples" / "nuxt"
PUBLIC = NUXT_DIR / ".output" / "public"
# What the build depends on; a change to any of them rebuilds.
SOURCES = ("package.json", "package-lock.json", "nuxt.config.ts", "app.vue", "tsconfig.json")
SOURCE_DIRS = ("composables", "pages", "components", "layouts", "plugins", "public")
# The test build takes ?gateway= (off by default: see examples/nuxt/README.md).
BUILD_ENV = {"NUXT_TELEMETRY_DISABLED": "1", "NUXT_PUBLIC_ALLOW_GATEWAY_PARAM": "true"}
BUILD_MARK = "allowGatewayParam:true"  # how the generated index.html carries that setting
NPM_CI_TIMEOUT_S = 300
GENERATE_TIMEOUT_S = 120

API_KEY = "nuxt-test-key-0123456789abcdef"

pytestmark = [
    requires_chromium,
    pytest.mark.skipif(shutil.which("npm") is None, reason="no npm: install Node.js 20+"),
    # Built and cached: ~10 s with node_modules present, plus ~15-50 s for a first npm ci.
    pytest.mark.timeout(NPM_CI_TIMEOUT_S + GENERATE_TIMEOUT_S + 60),
]


# --- building the example ---


def _newest_source() -> float:
    files = [NUXT_DIR / name for name in SOURCES if (NUXT_DIR / name).exists()]
    for folder in SOURCE_DIRS:
        if (NUXT_DIR / folder).is_dir():
            files.extend(p for p in (NUXT_DIR / folder).rglob("*") if p.is_file())
    return max(p.stat().st_mtime for p in files)


def _build_is_fresh() -> bool:
    index = PUBLIC / "index.html"
    return (
        index.exists()
        and index.stat().st_mtime > _newest_source()
        and BUILD_MARK in index.read_text(encoding="utf-8")
    )


def _run(command: list[str], timeout_s: float) -> None:
    env = {**os.environ, **BUILD_ENV}
    try:
        subprocess.run(
            command,
            cwd=NUXT_DIR,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{' '.join(command)} failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}")


@pytest.fixture(scope="session")
def nuxt_site() -> Path:
    """``examples/nuxt/.output/public``, built if it is missing or older than the sources."""
    with exclusive(NUXT_DIR):
        if not _build_is_fresh():
            if not packages_are_fresh(NUXT_DIR):
                _run(["npm", "ci", "--no-audit", "--no-fund"], NPM_CI_TIMEOUT_S)
            started = time.monotonic()
            _run([str(NUXT_DIR / "node_modules" / ".bin" / "nuxt"), "generate"], GENERATE_TIMEOUT_S)
            print(f"nuxt generate: {time.monotonic() - started:.1f} s")
        assert _build_is_fresh(), "nuxt generate did not write .output/public/index.html"
    return PUBLIC


def static_site(root: Path) -> web.Application:
    """What any static host does with the generated files (no SPA fallback needed: one page)."""

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_static("/", root)
    return app


# --- the page ---


def base_url(client: TestClient) -> str:  # type: ignore[type-arg]
    return str(client.make_url("/")).rstrip("/")


async def open_page(page: Page, origin: str, gateway_url: str) -> None:
    await page.goto(f"{origin}/?gateway={quote(gateway_url, safe='')}")
    await expect(page.get_by_test_id("state")).to_have_text("idle")
    await expect(page.locator("code")).to_have_text(gateway_url)


async def test_nuxt_page_talks_to_gateway_on_another_origin(
    nuxt_site: Path,
    gateway: GatewayFactory,
    ollama: Ollama,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
) -> None:
    site = await aiohttp_server(static_site(nuxt_site))
    origin = f"http://127.0.0.1:{site.port}"
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    client = await gateway(
        ollama_host=ollama[1], cors_origins=(origin,), auth="api-key", api_keys_file=keys
    )
    gateway_url = base_url(client)
    assert gateway_url != origin
    wav = fake_microphone_wav(DATA / "weather.wav", tmp_path / "mic.wav", lead_s=2.0)

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await open_page(page, origin, gateway_url)
        talk = page.get_by_test_id("talk")
        token = page.get_by_placeholder("API key or token")

        # A wrong key: the 401's JSON is readable cross-origin, so the page can say why.
        await token.fill("not-the-key-0123456789abcdef")
        await talk.click()
        await expect(page.get_by_test_id("state")).to_have_text("failed", timeout=10_000)
        await expect(page.get_by_test_id("error")).to_have_text("unknown API key (unauthorized)")

        await token.fill(API_KEY)
        async with page.expect_response(f"{gateway_url}/offer") as offered:
            await talk.click()
        offer = await offered.value
        assert offer.status == 200, await offer.text()
        assert offer.headers["access-control-allow-origin"] == origin
        exposed = offer.headers["access-control-expose-headers"].split(",")
        assert "location" in {name.strip().lower() for name in exposed}
        session_id = (await offer.json())["session_id"]
        await expect(page.get_by_test_id("state")).to_have_text("connected", timeout=15_000)

        # Speech → transcript → the streamed reply, all arriving on the data channel.
        user = page.get_by_test_id("user-turn").first
        await expect(user).to_contain_text("weather", ignore_case=True, timeout=30_000)
        transcript = (await user.locator("p").first.text_content()) or ""
        reply = page.get_by_test_id("reply").first
        await expect(reply.locator("p").first).to_have_text(
            f"You said: {transcript}. That is all.", timeout=10_000
        )

        # The text box: a typed question is answered like speech.
        await page.get_by_test_id("text").fill("How far is the moon")
        await page.get_by_test_id("text").press("Enter")
        await expect(page.get_by_test_id("reply").nth(1).locator("p").first).to_have_text(
            "You said: How far is the moon. That is all.", timeout=10_000
        )

        # Stop answer: a slow reply is cancelled mid-stream and marked as such.
        ollama[0].token_interval_s = 0.3
        await page.get_by_test_id("text").fill("Tell me a long story")
        await page.get_by_test_id("text").press("Enter")
        slow = page.get_by_test_id("reply").nth(2)
        await expect(slow).to_contain_text("You said:", timeout=10_000)
        await page.get_by_test_id("cancel").click()
        await expect(slow).to_contain_text("stopped (client)")
        await expect(page.get_by_test_id("cancel")).to_have_count(0)

        # Stop: the page DELETEs the session at the Location it read cross-origin.
        registry = client.app[SESSIONS]
        assert len(registry) == 1
        async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
            await talk.click()
        response = await deleted.value
        assert response.url == f"{gateway_url}/sessions/{session_id}"
        assert response.status == 204
        assert len(registry) == 0
        await expect(page.get_by_test_id("state")).to_have_text("idle")

        await expect(page.get_by_test_id("error")).to_have_count(0)
        # The wrong key's refused offer (401) is the only console error.
        assert [p for p in problems if "status of 401 (Unauthorized)" not in p] == []


async def test_nuxt_page_plays_the_spoken_reply_with_mute_and_stop(
    nuxt_site: Path,
    gateway: GatewayFactory,
    ollama: Ollama,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
) -> None:
    site = await aiohttp_server(static_site(nuxt_site))
    origin = f"http://127.0.0.1:{site.port}"
    state, url = ollama
    state.reply = LONG_REPLY
    client = await gateway(speak=True, ollama_host=url, cors_origins=(origin,))
    # A microphone that hears nothing: Chromium's default fake one beeps, which could
    # interrupt the voice.
    quiet = fake_microphone_wav([], tmp_path / "mic.wav", lead_s=0.0, tail_s=1.0)
    audio, indicator = "[data-testid=voice]", "[data-testid=speaking]"

    async with chromium(tmp_path, fake_audio=quiet) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await open_page(page, origin, base_url(client))
        await page.get_by_test_id("talk").click()
        await expect(page.get_by_test_id("state")).to_have_text("connected", timeout=15_000)
        mute = page.get_by_role("button", name="Mute voice")
        await expect(mute).to_have_attribute("aria-pressed", "false")
        await start_voice_probe(page, audio, indicator)

        # A typed question: the answer plays on the page's <audio>, audibly.
        await page.get_by_test_id("text").fill("Tell me about museums")
        await page.get_by_test_id("text").press("Enter")
        speaking = page.get_by_test_id("speaking")
        await expect(speaking).to_have_text("· speaking…", timeout=20_000)
        started = next(t for t, s in await voice_changes(page) if "speaking" in s)
        await wait_page_time(page, started + 1000)
        assert await playback(page, audio) | {"time": 0} == PLAYING
        loud = await voice_levels(page, started, started + 1000)
        assert max(loud) > 0.05, loud

        # Mute: this page only; the voice still arrives.
        await mute.click()
        await expect(mute).to_have_attribute("aria-pressed", "true")
        await expect(speaking).to_have_text("· speaking (muted)")
        assert (await playback(page, audio))["muted"] is True
        muted_at = started + 1000
        await wait_page_time(page, muted_at + 800)
        assert max(await voice_levels(page, muted_at, muted_at + 800)) > 0.05

        # Stop answer: the voice stops (its text had already ended).
        await page.get_by_test_id("cancel").click()
        await expect(speaking).to_have_text("")
        reply = page.get_by_test_id("reply").first
        await expect(reply.get_by_test_id("voice-stopped")).to_have_text("voice stopped")
        await expect(reply).to_contain_text("→ voice")
        cut = next(t for t, s in await voice_changes(page) if t > started and s == "")
        await falls_silent(page, cut)
        await expect(page.get_by_test_id("cancel")).to_have_count(0)
        await expect(page.get_by_test_id("error")).to_have_count(0)
        assert problems == []


async def test_nuxt_page_on_an_unlisted_origin_is_refused(
    nuxt_site: Path,
    gateway: GatewayFactory,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
) -> None:
    site = await aiohttp_server(static_site(nuxt_site))
    client = await gateway(cors_origins=("http://localhost:3000",))
    gateway_url = base_url(client)

    async with chromium(tmp_path) as context:
        page = await context.new_page()
        await open_page(page, f"http://127.0.0.1:{site.port}", gateway_url)
        await page.get_by_test_id("talk").click()

        await expect(page.get_by_test_id("state")).to_have_text("failed", timeout=10_000)
        await expect(page.get_by_test_id("error")).to_contain_text("--cors-origin")
        assert len(client.app[SESSIONS]) == 0


async def test_nuxt_page_on_a_public_origin_needs_local_network_access(
    nuxt_site: Path,
    gateway: GatewayFactory,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
) -> None:
    """A deployed page (Vercel) calling a gateway on a private or VPN address: Chrome's Local
    Network Access refuses until the user allows it for the site, then the same page works."""
    site = await aiohttp_server(static_site(nuxt_site))
    origin = f"http://127.0.0.1:{site.port}"
    client = await gateway(cors_origins=(origin,))
    # Chromium takes the page's address for a public one; the gateway stays on loopback.
    args = [*chromium_args(), f"--ip-address-space-overrides=127.0.0.1:{site.port}=public"]

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            page = await context.new_page()
            await open_page(page, origin, base_url(client))
            state, talk = page.get_by_test_id("state"), page.get_by_test_id("talk")

            await talk.click()  # headless Chromium answers the permission prompt with "block"
            await expect(state).to_have_text("failed", timeout=10_000)
            await expect(page.get_by_test_id("error")).to_contain_text("local network access")
            assert len(client.app[SESSIONS]) == 0

            await context.grant_permissions(["local-network-access"], origin=origin)
            await talk.click()
            await expect(state).to_have_text("connected", timeout=15_000)
            await talk.click()
            await expect(state).to_have_text("idle")
        finally:
            await context.close()
