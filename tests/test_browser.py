"""The built-in page in a real browser: Debian's Chromium, its fake microphone playing test
speech over real WebRTC to the gateway, Whisper, and the Ollama-compatible test server.

Clicked and typed into as a person would. The page's own timings (``performance.measure``)
are printed: Talk pressed → session ready, and end of speech → first reply text.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, expect

from gateway.http.state import SESSIONS
from gateway.testing.loopback import DATA
from scripts.make_test_speech import (
    SPEECH_PEAK,
    load_voice,
    scale_to_peak,
    with_pause,
    write_wav,
)
from tests.browser import (
    LONG_REPLY,
    PHONE_VIEWPORT,
    PLAYING,
    RECORD_PEERS,
    Microphone,
    chromium,
    clip_seconds,
    fake_microphone_wav,
    falls_silent,
    jitter_buffer_ms,
    mic_trace,
    page_now,
    playback,
    requires_chromium,
    start_voice_probe,
    voice_changes,
    voice_levels,
    wait_page_time,
    watch_console,
)
from tests.conftest import GatewayFactory, Ollama

API_KEY = "browser-test-key-0123456789abcdef"
SCREENSHOT_COPY = Path("/tmp/browser-page.png")  # for a person to look at after a run
AUDIO = "#reply-audio"  # the page's element that plays the gateway's voice
LOUD = 0.02  # RMS at the microphone: speech (what the page's own level meter calls loud)


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
        state = ollama[0]
        await page.locator("#text").fill("My name is Ada.")
        await page.locator("#text").press("Enter")
        await expect(page.get_by_text("You said: My name is Ada.")).to_be_visible()

        # The gateway ends the session on a restart: the page says so and reconnects.
        await client.app[SESSIONS].close_all("shutdown")
        await expect(connection).to_have_attribute("data-state", "reconnecting")
        await expect(page.locator("#connection-text")).to_contain_text("Gateway restarting")
        await expect(connection).to_have_attribute("data-state", "connected", timeout=15_000)
        await expect(page.locator("#mic-text")).to_have_text("Microphone on")  # still sending
        assert len(client.app[SESSIONS]) == 1
        # The new session continues the conversation (its offer carried the token).
        await page.locator("#text").fill("What is my name?")
        await page.locator("#text").press("Enter")
        await expect(page.get_by_text("You said: What is my name?")).to_be_visible()
        users = [m["content"] for m in state.requests[-1]["messages"] if m["role"] == "user"]
        assert users == ["My name is Ada.", "What is my name?"]
        # Told session.ended, the page does not DELETE the session the gateway ended.
        assert problems == []


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


@requires_chromium
async def test_the_page_speaks_the_reply_and_speaking_over_it_cuts_it_off(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    state, url = ollama
    state.reply = LONG_REPLY
    client = await gateway(speak=True, ollama_host=url)
    # The fake microphone: a question, then, while the ~15 s answer is being spoken, another
    # utterance. The voice begins 2-5 s after the first one ends (500 ms of VAD silence,
    # Whisper, Piper's first clause: measured on two busy cores), so the second one starts
    # 7.5 s after that end: seconds into the voice, and 10 s or more before it would end.
    first, second = DATA / "weather.wav", DATA / "lights.wav"
    wav = fake_microphone_wav([first, second], tmp_path / "mic.wav", lead_s=1.5, gap_s=7.5)
    assert clip_seconds(second) > 1.0  # well past the gateway's 300 ms barge-in threshold

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.add_init_script(RECORD_PEERS)
        await page.goto(page_url(client))
        voice, mute = page.locator("#voice"), page.get_by_role("button", name="Mute voice")
        await expect(voice).to_be_hidden()
        async with page.expect_request("**/offer") as offered:
            await page.locator("#talk").click()
        # The browser cancels the microphone's echo: the gateway's canceller can start warm.
        offer = json.loads((await offered.value).post_data or "{}")
        assert offer["session"] == {"echo_cancellation": True}
        assert "a=sendrecv" in offer["sdp"]
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=15_000
        )
        await expect(voice).to_have_text("Voice on")
        await expect(mute).to_have_attribute("aria-pressed", "false")
        await start_voice_probe(page, AUDIO, "#voice")

        # The answer is spoken: the indicator says so, and its voice plays, audibly.
        await expect(voice).to_have_attribute("data-state", "speaking", timeout=20_000)
        await expect(voice).to_have_text("Assistant speaking")
        reply = page.locator(".msg.assistant").first
        await expect(reply).to_have_class(re.compile(r"\bspeaking\b"))
        started = next(t for t, s in await voice_changes(page) if s == "speaking")
        await wait_page_time(page, started + 1500)
        playing = await playback(page, AUDIO)
        loud = await voice_levels(page, started, started + 1500)
        # (Its currentTime is not checked to advance: under load it stalls for a second.)
        assert playing | {"time": 0} == PLAYING, playing
        assert float(playing["time"]) > 0  # type: ignore[arg-type]
        assert max(loud) > 0.05, loud
        assert sum(level > 0.01 for level in loud) >= len(loud) // 2, loud  # speech, not a click
        timings = page.locator(".timings").first
        await expect(timings).to_contain_text("end of speech → voice")

        # The second utterance cuts the voice off: the indicator goes out, the reply says
        # why, and the audio falls silent once what the browser had buffered has played.
        await expect(voice).to_have_attribute("data-state", "idle", timeout=20_000)
        await expect(reply.locator(".note")).to_have_text("Voice stopped: you started speaking")
        await expect(reply).not_to_have_class(re.compile(r"\bspeaking\b"))
        await expect(page.locator(".msg.user")).to_have_count(1)  # the second is still talking
        cut = next(t for t, s in await voice_changes(page) if s == "idle" and t > started)
        spoken_s = (cut - started) / 1000
        assert 0.5 < spoken_s < 12, spoken_s  # cut by the second utterance, not ended
        speaking_until_cut = await voice_levels(page, cut - 1500, cut)
        assert max(speaking_until_cut) > 0.03, speaking_until_cut
        silent_after = await falls_silent(page, cut)
        # When the second utterance began, as the page sent it: how long the gateway took to
        # let it interrupt (its barge-in needs 300 ms of speech while it speaks).
        said = [t for t, level in await mic_trace(page, started, cut) if level > LOUD]
        assert said, "the microphone sent nothing loud while the voice played"
        barge_in_ms = cut - said[0]
        print(
            f"\nspoken {spoken_s:.1f} s; cut {barge_in_ms:.0f} ms into the second utterance; "
            f"silent {silent_after:.0f} ms after the page heard of the cut (jitter buffer "
            f"{await jitter_buffer_ms(page):.0f} ms); timings: {await timings.text_content()}"
        )
        # Heard at once (~400 ms), as the offer's echo_cancellation lets the gateway's echo
        # canceller start warm; a cold one suppressed the speech for ~1.5 s of it.
        assert barge_in_ms < 1000
        assert problems == []


@requires_chromium
async def test_mute_silences_the_page_only_and_stop_cuts_the_voice(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    state, url = ollama
    state.reply = LONG_REPLY
    client = await gateway(speak=True, ollama_host=url)

    async with chromium(tmp_path) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(page_url(client))
        box = page.get_by_label("Message")
        await box.fill("tell me about museums")
        await box.press("Enter")  # connects (no microphone: the voice plays all the same)
        voice, mute = page.locator("#voice"), page.get_by_role("button", name="Mute voice")
        await expect(voice).to_be_visible(timeout=15_000)
        await start_voice_probe(page, AUDIO, "#voice")
        await expect(voice).to_have_attribute("data-state", "speaking", timeout=20_000)

        # Muted: the element is silent, but the gateway goes on speaking.
        await mute.click()
        await expect(mute).to_have_attribute("aria-pressed", "true")
        await expect(voice).to_have_text("Assistant speaking (muted)")
        muted_at = await page_now(page)
        await wait_page_time(page, muted_at + 1000)
        assert (await playback(page, AUDIO))["muted"] is True
        still_sent = await voice_levels(page, muted_at, muted_at + 1000)
        assert max(still_sent) > 0.05, still_sent
        await expect(voice).to_have_attribute("data-state", "speaking")
        metrics = await (await client.get("/metrics")).text()
        assert 'gateway_replies_spoken_total{outcome="cut"}' not in metrics

        await mute.click()
        await expect(mute).to_have_attribute("aria-pressed", "false")
        await expect(voice).to_have_text("Assistant speaking")
        assert await playback(page, AUDIO) | {"time": 0} == PLAYING

        # On a phone the voice controls fit too.
        await page.set_viewport_size(PHONE_VIEWPORT)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        target = await mute.bounding_box()
        assert target is not None
        assert target["height"] >= 24  # WCAG 2.2 target size
        shot = tmp_path / "page-speaking.png"
        await page.screenshot(path=shot)
        shutil.copyfile(shot, SCREENSHOT_COPY.with_name("browser-page-speaking.png"))

        # Stop reply: the text had ended, the voice had not; it stops at once.
        stop = page.get_by_role("button", name="Stop reply")
        await stop.click()
        await expect(voice).to_have_attribute("data-state", "idle")
        await expect(page.locator(".msg.assistant .note")).to_have_text(
            "Voice stopped: you cancelled it"
        )
        await expect(stop).to_be_hidden()
        cut = next(t for t, s in await voice_changes(page) if s == "idle")
        print(f"\nsilent {await falls_silent(page, cut):.0f} ms after Stop reply")
        assert problems == []


@requires_chromium
async def test_captions_settle_and_a_pause_mid_sentence_does_not_end_the_turn(
    gateway: GatewayFactory, ollama: Ollama, tmp_path: Path
) -> None:
    # Turn detection as by default (model and text); captions every 800 ms of speech (by
    # default they are on only where ASR runs on a GPU).
    client = await gateway(ollama_host=ollama[1], partial_interval_ms=800)
    text = "I would like to know the weather in Paris and in London this weekend."
    speech = with_pause(text, 5, 0.7, load_voice(alignments=True))
    clip = tmp_path / "paused.wav"
    write_wav(clip, scale_to_peak(speech, SPEECH_PEAK), 16_000)
    wav = fake_microphone_wav(clip, tmp_path / "mic.wav")

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(page_url(client))
        await page.locator("#talk").click()
        # A caption while the person speaks: grey until it settles.
        caption = page.locator('.msg[data-state="partial"]').first
        await expect(caption).to_be_visible(timeout=20_000)
        utterance = await caption.get_attribute("data-utterance-id")
        # The same line becomes the final: one turn, both halves of the sentence.
        line = page.locator(f'.msg[data-utterance-id="{utterance}"]')
        await expect(line).to_have_attribute("data-state", "final", timeout=20_000)
        await expect(line).to_contain_text("weather", ignore_case=True)
        await expect(line).to_contain_text("London", ignore_case=True)
        await expect(page.locator(".msg.user")).to_have_count(1)
        assert await line.locator(".unstable").count() == 0
        reply = page.locator(".msg.assistant").first
        await expect(reply).to_have_attribute("aria-busy", "false", timeout=10_000)
        assert problems == []
