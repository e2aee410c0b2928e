"""The built-in page in a real browser: Debian's Chromium, its fake microphone playing test
speech over real WebRTC to the gateway, Whisper, and the Ollama-compatible test server.

Clicked and typed into as a person would. The page's own timings (``performance.measure``)
are printed: Talk pressed → session ready, and end of speech → first reply text.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, expect

from gateway.http.state import SESSIONS
from gateway.testing.loopback import DATA
from gateway.testing.ollama_server import FakeOllama
from tests.browser import (
    PHONE_VIEWPORT,
    Microphone,
    chromium,
    fake_microphone_wav,
    requires_chromium,
    watch_console,
)
from tests.conftest import GatewayFactory

Ollama = tuple[FakeOllama, str]
API_KEY = "browser-test-key-0123456789abcdef"
SCREENSHOT_COPY = Path("/tmp/browser-page.png")  # for a person to look at after a run


def page_url(client: TestClient) -> str:  # type: ignore[type-arg]
    # 127.0.0.1 over plain HTTP is a secure context: the microphone is allowed.
    return str(client.make_url("/"))


async def measures(page: Page) -> dict[str, float]:
    """The page's ``performance.measure`` entries, name → milliseconds."""
    entries = await page.evaluate(
        """() => performance.getEntriesByType("measure").map((m) => [m.name, m.duration])"""
    )
    return {str(name): float(ms) for name, ms in entries}


async def test_client_module_is_served_open_as_javascript(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    client = await gateway(auth="api-key", api_keys_file=keys)
    for path in ("/gateway-client.js", "/app.js"):
        response = await client.get(path)
        assert response.status == 200, path  # open: the page needs them before any token
        assert response.content_type == "text/javascript"
    module = await (await client.get("/gateway-client.js")).text()
    assert "export class GatewayClient" in module
    page = await (await client.get("/")).text()
    assert '<script type="module" src="/app.js"></script>' in page
    assert "style=" not in page  # the CSP allows no inline style (or script)


@requires_chromium
async def test_talk_shows_transcript_and_streamed_reply(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    client = await gateway(ollama_host=ollama[1])
    speech = json.loads((DATA / "speech.json").read_text())["clips"][0]
    wav = fake_microphone_wav(DATA / speech["file"], tmp_path / "mic.wav")

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(page_url(client))
        talk = page.locator("#talk")
        await expect(talk).to_have_text("Talk")

        clicked = time.monotonic()
        await talk.click()
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=15_000
        )
        ready_s = time.monotonic() - clicked
        await expect(talk).to_have_text("Stop")
        await expect(page.locator("#mic-text")).to_have_text("Microphone on")

        user = page.locator(".msg.user .text").first
        await expect(user).to_contain_text("weather", ignore_case=True, timeout=20_000)
        transcript = (await user.text_content()) or ""
        reply = page.locator(".msg.assistant").first
        await expect(reply).to_have_attribute("aria-busy", "false", timeout=10_000)
        assert (await reply.locator(".text").text_content()) == (
            f"You said: {transcript}. That is all."
        )
        timings = page.locator(".timings").first
        await expect(timings).to_contain_text("ASR")
        await expect(timings).to_contain_text("first word")

        taken = await measures(page)
        print(
            f"\nbrowser: click → ready {taken['gateway:click→ready']:.0f} ms "
            f"(Playwright saw {1000 * ready_s:.0f} ms); "
            f"end of speech → first reply text {taken['gateway:speech-end→reply']:.0f} ms; "
            f"timings line: {await timings.text_content()}"
        )
        assert 0 < taken["gateway:click→ready"] < 15_000
        assert 0 < taken["gateway:speech-end→reply"] < 10_000

        shot = tmp_path / "page-desktop.png"
        await page.screenshot(path=shot, full_page=True)
        shutil.copyfile(shot, SCREENSHOT_COPY)
        await page.set_viewport_size(PHONE_VIEWPORT)
        await page.screenshot(path=tmp_path / "page-phone.png")
        shutil.copyfile(
            tmp_path / "page-phone.png", SCREENSHOT_COPY.with_name("browser-page-phone.png")
        )

        # Stop: the microphone goes off, the session stays for typing.
        await talk.click()
        await expect(talk).to_have_text("Talk")
        await expect(page.locator("#mic-text")).to_have_text("Microphone off")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
        # Talk again: the same session hears the microphone anew (no renegotiation); the
        # fake device plays its file again from the start.
        await talk.click()
        await expect(talk).to_have_text("Stop")
        await expect(page.locator(".msg.user")).to_have_count(2, timeout=20_000)
        await expect(page.locator(".msg.user .text").nth(1)).to_contain_text(
            "weather", ignore_case=True
        )
        assert problems == []


@requires_chromium
async def test_typed_text_streams_and_cancel_stops_it(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    state, url = ollama
    client = await gateway(ollama_host=url)

    async with chromium(tmp_path) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(page_url(client))
        box = page.get_by_label("Message")
        await box.fill("hello there")
        await box.press("Enter")  # connects (no microphone) and sends

        reply = page.locator(".msg.assistant").first
        await expect(reply.locator(".text")).to_have_text(
            "You said: hello there. That is all.", timeout=15_000
        )
        await expect(reply).to_have_attribute("aria-busy", "false")
        assert (await page.locator("#mic-text").text_content()) == "Microphone off"

        state.token_interval_s = 0.3  # slow enough to stop half way
        await box.fill("tell me a long story")
        await box.press("Enter")
        second = page.locator(".msg.assistant").nth(1)
        await expect(second.locator(".text")).to_contain_text("You said:", timeout=10_000)
        cancel = page.get_by_role("button", name="Stop reply")
        await expect(cancel).to_be_visible()
        await cancel.click()
        await expect(second.locator(".note")).to_have_text("Stopped: you cancelled it")
        await expect(cancel).to_be_hidden()
        said = (await second.locator(".text").text_content()) or ""
        assert said.startswith("You said:")
        assert not said.endswith("That is all.")
        assert "gateway:send→reply" in await measures(page)
        assert problems == []


@requires_chromium
async def test_token_asked_for_on_401_then_connects(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    client = await gateway(ollama_host=ollama[1], auth="api-key", api_keys_file=keys)

    async with chromium(tmp_path) as context:
        page = await context.new_page()
        await page.goto(page_url(client))
        box = page.get_by_label("Message")
        await box.fill("are you there")
        await box.press("Enter")

        token = page.get_by_label("Access token")
        await expect(token).to_be_visible(timeout=10_000)
        await expect(token).to_be_focused()
        await expect(page.locator("#token-error")).to_be_hidden()
        await token.fill("not-the-right-key-at-all")
        await token.press("Enter")
        await expect(page.locator("#token-error")).to_have_text(
            "The gateway did not accept that token (unknown API key)."
        )

        await token.fill(API_KEY)
        await token.press("Enter")
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=15_000
        )
        await expect(token).to_be_hidden()
        # The refused message is sent once the token is accepted.
        await expect(page.locator(".msg.assistant .text").first).to_have_text(
            "You said: are you there. That is all.", timeout=10_000
        )
        assert await page.evaluate("sessionStorage.getItem('local-ai-gateway.token')") == API_KEY


@requires_chromium
async def test_phone_keyboard_and_reconnect(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    """On a phone-sized screen: nothing to scroll sideways, the talk button on screen; the
    keyboard alone connects (Tab to Talk, Space); a dropped session comes back by itself."""
    client = await gateway(ollama_host=ollama[1])
    wav = fake_microphone_wav(DATA / "noise.wav", tmp_path / "mic.wav")  # no words in it
    viewport = PHONE_VIEWPORT
    phone = chromium(tmp_path, fake_audio=wav, viewport=viewport, is_mobile=True, has_touch=True)
    async with phone as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(page_url(client))
        assert await page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        talk = page.locator("#talk")
        box = await talk.bounding_box()
        assert box is not None
        assert box["width"] >= 80
        assert box["y"] + box["height"] <= viewport["height"]

        await page.keyboard.press("Tab")
        await expect(talk).to_be_focused()
        await page.keyboard.press("Space")
        connection = page.locator("#connection")
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        await expect(talk).to_have_text("Stop")

        # The gateway ends the session (as on a restart): the page says so and reconnects.
        await client.app[SESSIONS].close_all("test")
        await expect(connection).to_have_attribute("data-state", "reconnecting")
        await expect(page.locator("#connection-text")).to_contain_text("Connection lost")
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        await expect(page.locator("#mic-text")).to_have_text("Microphone on")  # still sending
        assert len(client.app[SESSIONS]) == 1
        # The page ends the dropped session too (DELETE), in case only it had lost touch:
        # here the gateway had already ended it, so that one answer is a 404.
        assert [p for p in problems if "/sessions/" not in p] == []


@requires_chromium
@pytest.mark.parametrize(
    ("microphone", "says"),
    [
        ("deny", "The browser was not allowed to use the microphone."),
        ("absent", "No microphone was found."),
    ],
    ids=["denied", "absent"],
)
async def test_microphone_problems_in_words(
    gateway: GatewayFactory, tmp_path: Path, microphone: Microphone, says: str
) -> None:
    client = await gateway()
    async with chromium(tmp_path, microphone=microphone) as context:
        page = await context.new_page()
        await page.goto(page_url(client))
        await page.locator("#talk").click()
        await expect(page.get_by_role("alert").first).to_contain_text(says)
        await expect(page.locator("#mic-text")).not_to_have_text("Microphone on")
        await expect(page.locator("#talk")).to_have_text("Talk")
        assert len(client.app[SESSIONS]) == 0


@requires_chromium
async def test_unreachable_gateway_in_words(gateway: GatewayFactory, tmp_path: Path) -> None:
    client = await gateway()
    async with chromium(tmp_path, microphone="absent") as context:
        page = await context.new_page()
        await page.goto(page_url(client))
        await client.server.close()  # the gateway stops after the page loaded
        box = page.get_by_label("Message")
        await box.fill("anyone there?")
        await box.press("Enter")
        await expect(page.get_by_role("alert").first).to_contain_text(
            "The gateway is not answering."
        )
        await expect(box).to_have_value("anyone there?")  # kept, to send once it is back
