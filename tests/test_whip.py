"""WHIP (RFC 9725) at ``POST /whip``: the offer and headers (pure), a publisher with no data
channel getting transcripts and replies over Server-Sent Events (aiortc), bad input, CORS,
auth and limits; and a WHIP client nobody here wrote (``@eyevinn/whip-web-client``, from
npm, bundled with esbuild) publishing Chromium's fake microphone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription
from pytest_aiohttp import AiohttpServer

from gateway.errors import OfferError
from gateway.http.state import SESSIONS
from gateway.http.whip import (
    EVENTS_REL,
    answer_headers,
    ice_etag,
    ice_server_links,
)
from gateway.testing.loopback import DATA, MicrophoneTrack, load_clips
from signalling.offer import MAX_BODY_BYTES, MAX_SDP_BYTES, parse_sdp_offer
from signalling.registry import SessionRegistry
from tests.browser import chromium, fake_microphone_wav, requires_chromium, watch_console
from tests.conftest import GatewayFactory, Ollama
from tests.npm import exclusive, packages_are_fresh
from tests.sse import EventStream
from tests.test_offer import CHROME_OFFER

SDP = {"Content-Type": "application/sdp"}
KEY_A = "whip-test-key-a-0123456789abcdef"
KEY_B = "whip-test-key-b-0123456789abcdef"
NUXT = "http://127.0.0.1:3000"
CLIENT_DIR = Path(__file__).resolve().parent / "whip_client"
NPM_CI_TIMEOUT_S = 300


# --- pure: the offer and the answer's headers ---


def test_a_bare_sdp_offer_is_checked_as_offer_checks_it() -> None:
    offer = parse_sdp_offer(CHROME_OFFER.replace("\r\n", "\n").encode())
    assert offer.sdp.startswith("v=0\r\n")
    assert "\n" not in offer.sdp.replace("\r\n", "")  # CRLF throughout
    assert dict(offer.session) == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the SDP offer is empty"),
        (b"v=0\r\n\xff\r\n", "the SDP offer is not valid UTF-8: byte 0xff at offset 5"),
        (b" ", "the SDP offer is empty"),
        (b"hello", "SDP line 1 is malformed: 'hello'"),
        (b"v=1\r\n", "SDP must start with 'v=0'"),
        (b"v=" + b"0" * MAX_SDP_BYTES, "the SDP offer is too large"),
    ],
)
def test_a_bad_offer_says_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(OfferError, match=re.escape(message)) as caught:
        parse_sdp_offer(body)
    assert '"sdp"' not in str(caught.value)  # worded for a body that is the SDP itself


ANSWER = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=candidate:1 ...\r\n"


def test_the_etag_names_the_ice_session() -> None:
    tag = ice_etag(ANSWER)
    assert re.fullmatch(r'"[0-9a-f]{32}"', tag)
    assert ice_etag(ANSWER.replace("a=candidate:1 ...", "a=candidate:2 ...")) == tag
    assert ice_etag(ANSWER.replace("abcd", "wxyz")) != tag


def test_the_answer_headers() -> None:
    servers: list[dict[str, object]] = [
        {"urls": "stun:stun.lan:3478"},
        {"urls": ["turn:relay.example:3478?transport=udp"], "username": "9:a", "credential": 'x"y'},
        {"urls": "bad url"},  # never copied into a header
    ]
    headers = answer_headers("S1", "T1", ANSWER, servers)
    assert headers["Content-Type"] == "application/sdp"
    assert headers["Location"] == "/sessions/S1"
    assert headers["ETag"] == ice_etag(ANSWER)
    assert headers["Cache-Control"] == "no-store"
    assert headers.getall("Link") == [
        f'</sessions/S1/events?token=T1>; rel="{EVENTS_REL}"',
        '<stun:stun.lan:3478>; rel="ice-server"',
        '<turn:relay.example:3478?transport=udp>; rel="ice-server"; username="9:a"; '
        'credential="x\\"y"; credential-type="password"',
    ]
    assert ice_server_links([{"urls": 3}, {}]) == []


# --- a WHIP publisher in Python: aiortc, audio only, no data channel ---


class Publisher:
    """What OBS or a device sends: one audio track, send-only, no data channel."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.mic = MicrophoneTrack()
        self.pc.addTransceiver(self.mic, direction="sendonly")

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()


def events_link(links: list[str]) -> str:
    (url,) = [m.group(1) for v in links if (m := re.match(rf'<([^>]+)>; rel="{EVENTS_REL}"', v))]
    return url


async def publish(
    client: TestClient,  # type: ignore[type-arg]
    headers: dict[str, str] | None = None,
) -> tuple[Publisher, Any]:
    publisher = Publisher()
    response = await client.post(
        "/whip", data=await publisher.offer(), headers={**SDP, **(headers or {})}
    )
    assert response.status == 201, await response.text()
    await publisher.accept(await response.text())
    return publisher, response


async def test_a_publisher_without_a_data_channel_hears_back_over_sse(
    gateway: GatewayFactory, ollama: Ollama
) -> None:
    # A gateway with a voice: WHIP sessions still get none (the answer only receives).
    client = await gateway(ollama_host=ollama[1], speak=True)
    publisher, response = await publish(client)
    try:
        assert response.headers["Content-Type"] == "application/sdp"
        location = response.headers["Location"]
        assert re.fullmatch(r"/sessions/[A-Za-z0-9_-]{22}", location)
        assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["ETag"])
        answer = await response.text()
        audio = answer[answer.index("m=audio") :].split("m=", 2)[1]
        assert "a=recvonly" in audio
        assert "m=application" not in answer

        stream = EventStream(await client.get(events_link(response.headers.getall("Link"))))
        ready = await stream.next()
        assert (ready.id, ready.type) == (1, "session.ready")
        assert ready.data["tts"]["enabled"] is False
        _, clip = load_clips()[0]
        publisher.mic.play(clip)
        final = await stream.until("transcript.final", within=30)
        assert "weather" in final.data["text"].lower()
        done = await stream.until("reply.done", within=20)
        assert done.data["text"] == f"You said: {final.data['text']}. That is all."
        assert not [e for e in stream.received if e.type.startswith("reply.audio")]

        assert (await client.delete(location)).status == 204
        assert [e.data for e in await stream.rest()] == [
            {"type": "session.ended", "reason": "client"}
        ]
    finally:
        await publisher.close()


async def test_bad_requests_are_clear_4xx_and_leave_the_gateway_unharmed(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    json_offer = {"type": "offer", "sdp": CHROME_OFFER}

    async def error(response: Any, status: int) -> dict[str, str]:
        assert response.status == status, await response.text()
        body: dict[str, dict[str, str]] = await response.json()
        return body["error"]

    wrong = await error(await client.post("/whip", json=json_offer), 415)
    assert wrong["code"] == "unsupported_media_type"
    assert "application/sdp" in wrong["message"]
    assert "POST /offer" in wrong["message"]
    wrong = await error(await client.post("/offer", data=CHROME_OFFER, headers=SDP), 415)
    assert "POST /whip" in wrong["message"]
    bad = await error(await client.post("/whip", data="v=0\r\nnonsense\r\n", headers=SDP), 400)
    assert bad["code"] == "bad_offer"
    empty = await error(await client.post("/whip", data=b"", headers=SDP), 400)
    assert empty["message"] == "the SDP offer is empty"
    huge = await client.post("/whip", data=b"v=0\r\n" + b"a=x\r\n" * 40_000, headers=SDP)
    assert (await error(huge, 413))["code"] == "too_large"
    unknown = await client.patch("/sessions/nope", data="a=end-of-candidates\r\n")
    assert (await error(unknown, 404))["code"] == "not_found"
    assert len(client.app[SESSIONS]) == 0  # nothing was opened by any of them

    publisher, response = await publish(client)
    try:
        location = response.headers["Location"]
        trickle = await client.patch(
            location,
            data="a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
            "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host\r\n",
            headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"},
        )
        refused = await error(trickle, 405)
        assert refused["code"] == "method_not_allowed"
        assert "neither trickle ICE nor ICE restarts" in refused["message"]
        assert trickle.headers["Allow"] == "DELETE, GET, OPTIONS"
        # Unharmed: the session goes on, and a GET on it says so.
        assert len(client.app[SESSIONS]) == 1
        assert (await client.get(location)).status == 204
        assert (await client.delete(location)).status == 204
        assert (await client.get(location)).status == 404
    finally:
        await publisher.close()


async def test_an_sdp_over_its_limit_is_413_though_the_body_fits(
    gateway: GatewayFactory,
) -> None:
    # 70 KB: over MAX_SDP_BYTES (64 KiB), under the app's body limit (a JSON offer's, 80 KiB).
    client = await gateway()
    sdp = CHROME_OFFER + "a=x-filler:" + "0" * (70_000 - len(CHROME_OFFER)) + "\r\n"
    assert MAX_SDP_BYTES < len(sdp) < MAX_BODY_BYTES
    response = await client.post("/whip", data=sdp.encode(), headers=SDP)
    assert response.status == 413, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "too_large"
    assert error["message"].startswith("the SDP offer is too large")
    assert len(client.app[SESSIONS]) == 0


async def test_options_and_cors(gateway: GatewayFactory) -> None:
    client = await gateway(cors_origins=(NUXT,))
    plain = await client.options("/whip")
    assert plain.status == 200
    assert plain.headers["Accept-Post"] == "application/sdp"
    assert "POST" in plain.headers["Allow"]
    assert (await client.get("/whip")).status == 204

    preflight = await client.options(
        "/whip",
        headers={
            "Origin": NUXT,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == NUXT
    assert preflight.headers["Accept-Post"] == "application/sdp"
    # No PATCH: a browser WHIP client learns not to trickle candidates.
    assert "PATCH" not in preflight.headers["Access-Control-Allow-Methods"]

    publisher, response = await publish(client, {"Origin": NUXT})
    try:
        assert response.headers["Access-Control-Allow-Origin"] == NUXT
        exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Location", "ETag", "Link"} <= exposed
    finally:
        await publisher.close()


async def test_bearer_auth_and_sessions_of_others(gateway: GatewayFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    client = await gateway(auth="api-key", api_keys_file=keys)
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    anonymous = await client.post("/whip", data=CHROME_OFFER, headers=SDP)
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="local-ai-gateway"'
    publisher, response = await publish(client, a)
    try:
        location = response.headers["Location"]
        for method in ("GET", "PATCH", "DELETE"):
            theirs = await client.request(method, location, headers=b)
            assert theirs.status == 404, method  # not 403: nothing says it exists
        assert (await client.request("PATCH", location, headers=a)).status == 405
        assert (await client.get(location, headers=a)).status == 204
        assert (await client.delete(location, headers=a)).status == 204
    finally:
        await publisher.close()


async def test_the_session_limits_apply(gateway: GatewayFactory) -> None:
    client = await gateway(max_sessions=1)
    publisher, _ = await publish(client)
    try:
        second = await client.post("/whip", data=CHROME_OFFER, headers=SDP)
        assert second.status == 503
        assert second.headers["Retry-After"]
        assert (await second.json())["error"]["code"] == "session_limit"
    finally:
        await publisher.close()
    limited = await gateway(offer_rate=1)
    publisher, _ = await publish(limited)
    try:
        again = await limited.post("/whip", data=CHROME_OFFER, headers=SDP)
        assert again.status == 429
        assert again.headers["Retry-After"]
    finally:
        await publisher.close()


# --- a third-party WHIP client in Chromium ---


@pytest.fixture(scope="session")
def whip_client_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``@eyevinn/whip-web-client`` as one browser script (``window.WHIP.WHIPClient``):
    installed from its lock file with npm ci, bundled with esbuild, as shipped."""
    if shutil.which("npm") is None:
        pytest.skip("no npm: install Node.js 20+")
    out = tmp_path_factory.mktemp("whip-client") / "whip-client.js"
    with exclusive(CLIENT_DIR):
        if not packages_are_fresh(CLIENT_DIR):
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=CLIENT_DIR,
                check=True,
                capture_output=True,
                timeout=NPM_CI_TIMEOUT_S,
            )
        esbuild = CLIENT_DIR / "node_modules" / ".bin" / "esbuild"
        subprocess.run(
            [str(esbuild), "entry.js", "--bundle", "--format=iife", "--global-name=WHIP",
             "--platform=browser", f"--outfile={out}", "--log-level=warning"],
            cwd=CLIENT_DIR,
            check=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
    return out


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WHIP publisher</title>
<script src="/whip-client.js"></script></head><body>publisher</body></html>"""

# The client used as its README shows, plus no STUN server (its default is Google's).
PUBLISH = """async ({ endpoint, token }) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const client = new WHIP.WHIPClient({ endpoint, opts: { iceServers: [], authkey: token } });
  window.whip = client;
  await client.ingest(stream);
  return { resource: await client.getResourceUrl(), links: await client.getResourceExtensions() };
}"""

# How a page reads the session's events: an EventSource on the capability URL.
LISTEN = """(url) => {
  window.events = [];
  const source = new EventSource(url);
  source.onmessage = (e) => {
    const event = JSON.parse(e.data);
    window.events.push(event);
    if (event.type === "session.ended") source.close();
  };
}"""


def publisher_site(bundle: Path) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle, headers={"Content-Type": "text/javascript"})

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/whip-client.js", script)
    app.router.add_get("/favicon.ico", no_icon)
    return app


@requires_chromium
@pytest.mark.timeout(NPM_CI_TIMEOUT_S + 120)
async def test_a_third_party_whip_client_in_chromium_gets_transcript_and_reply_over_sse(
    whip_client_bundle: Path,
    gateway: GatewayFactory,
    ollama: Ollama,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
) -> None:
    site = await aiohttp_server(publisher_site(whip_client_bundle))
    origin = f"http://127.0.0.1:{site.port}"
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY_A + "\n")
    client = await gateway(
        ollama_host=ollama[1], auth="api-key", api_keys_file=keys, cors_origins=(origin,)
    )
    base = str(client.make_url("/"))
    # The client waits 2 s for ICE gathering before it posts: speech starts after that.
    wav = fake_microphone_wav(DATA / "weather.wav", tmp_path / "mic.wav", lead_s=5.0)

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        problems = watch_console(page)
        await page.goto(origin)
        whip_url = urljoin(base, "/whip")
        async with page.expect_response(
            lambda r: r.url == whip_url and r.request.method == "POST"
        ) as posted:
            published = await page.evaluate(PUBLISH, {"endpoint": whip_url, "token": KEY_A})
        answer = await posted.value
        assert answer.request.method == "POST"
        assert answer.status == 201
        assert answer.headers["content-type"] == "application/sdp"
        assert answer.request.headers["content-type"] == "application/sdp"
        # What the client read through CORS: the session URL and the extensions.
        assert published["resource"] == urljoin(base, answer.headers["location"])
        events_url = urljoin(base, events_link(published["links"]))

        # The page listens (cross-origin EventSource), and so does this test (aiohttp).
        await page.evaluate(LISTEN, events_url)
        stream = EventStream(await client.get(events_url.removeprefix(base.rstrip("/"))))
        final = await stream.until("transcript.final", within=40)
        assert "weather" in final.data["text"].lower()
        done = await stream.until("reply.done", within=20)
        assert done.data["text"] == f"You said: {final.data['text']}. That is all."
        registry: SessionRegistry = client.app[SESSIONS]
        (session,) = registry._sessions.values()
        assert session.transport_events is False  # no data channel: SSE alone carried them

        page_types = await page.evaluate("() => window.events.map((e) => e.type)")
        assert page_types[0] == "session.ready"
        assert "transcript.final" in page_types
        assert "reply.done" in page_types

        # Ended by its owner (the client's own DELETE sends no Authorization): both told.
        deleted = await client.delete(
            answer.headers["location"], headers={"Authorization": f"Bearer {KEY_A}"}
        )
        assert deleted.status == 204
        assert [e.data for e in await stream.rest()][-1]["reason"] == "client"
        await page.wait_for_function("() => window.events.at(-1)?.type === 'session.ended'")
        assert problems == []
