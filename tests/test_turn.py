"""TURN for clients off the VPN: the credential maths (``signalling/turn.py``), what
``GET /config`` hands out and to whom (``gateway/http/relay.py``), and a real coturn
(Debian's ``coturn``, started here on loopback with ``use-auth-secret``) that grants
allocations to fresh credentials and refuses expired and forged ones, relays the gateway's
own peer connections, and carries a whole voice turn for a Chromium limited to relayed
candidates (``iceTransportPolicy: "relay"``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from playwright.async_api import Page

from gateway.errors import ConfigError
from gateway.http.app import build_app
from gateway.http.auth import AUTH_FAILURE_BURST
from gateway.http.relay import GATEWAY_USER
from gateway.ops.config import Config
from gateway.ops.doctor import allocate_relay, check_turn_relay
from gateway.testing.loopback import DATA
from gateway.testing.ollama_server import FakeOllama
from signalling.ice import IcePolicy
from signalling.peer import new_peer_connection
from signalling.turn import (
    MIN_SECRET_BYTES,
    TurnRelay,
    parse_secret,
    parse_turn_url,
    user_id,
)
from tests.browser import chromium, fake_microphone_wav, requires_chromium
from tests.conftest import GatewayFactory

SECRET = "north-wind-shared-secret-0123456789"
API_KEY = "turn-test-api-key-0123456789abcdef"
TTL_S = 3600
TURNSERVER = shutil.which("turnserver")
requires_coturn = pytest.mark.skipif(
    TURNSERVER is None,
    reason="no turnserver binary: install Debian's coturn (apt-get install coturn)",
)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
ALLOCATE_TIMEOUT_S = 5.0


# --- the credential: coturn's use-auth-secret scheme --------------------------------------


def test_credential_matches_an_independent_hmac() -> None:
    relay = TurnRelay(("turn:turn.example.org:3478",), SECRET.encode(), TTL_S)
    credential = relay.credential("key1", now=1_700_000_000.9)
    assert credential.username == "1700003600:key1"  # <expiry>:<user>, whole seconds
    assert credential.expires == 1_700_003_600
    # Computed outside Python, with OpenSSL:
    #   printf '%s' '1700003600:key1' \
    #     | openssl dgst -sha1 -hmac 'north-wind-shared-secret-0123456789' -binary | base64
    assert credential.credential == "o7tow4oNwMt+W29hT4s3uq84ua0="
    # And the scheme as the draft words it, for any user and time.
    username = "1700000060:anonymous"
    expected = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    made = TurnRelay(relay.urls, SECRET.encode(), 60).credential("anonymous", 1_700_000_000)
    assert (made.username, base64.b64decode(made.credential)) == (username, expected)


def test_a_browser_gets_a_w3c_ice_server_and_aiortc_the_same() -> None:
    urls = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349")
    relay = TurnRelay(urls, SECRET.encode(), TTL_S)
    server = relay.ice_server("key1", 1_700_000_000)
    assert server == {
        "urls": list(urls),
        "username": "1700003600:key1",
        "credential": "o7tow4oNwMt+W29hT4s3uq84ua0=",
    }
    rtc = relay.rtc_ice_server("key1", 1_700_000_000)
    assert (rtc.urls, rtc.username, rtc.credential) == (
        list(urls),
        server["username"],
        server["credential"],
    )


@pytest.mark.parametrize(
    ("subject", "user"),
    [
        ("key1", "key1"),
        ("alice@example.org", "alice@example.org"),
        ("a b:c\"d'e\\f\ng", "a_b_c_d_e_f_g"),  # what coturn or a client could misread
        ("ünïcode", "_n_code"),
        ("x" * 100, "x" * 64),
        ("", "_"),
    ],
)
def test_user_ids_are_safe_for_coturn(subject: str, user: str) -> None:
    assert user_id(subject) == user
    relay = TurnRelay(("turn:t.example",), SECRET.encode(), TTL_S)
    assert relay.credential(subject, 0).username == f"{TTL_S}:{user}"


@pytest.mark.parametrize(
    "url",
    [
        "turn:turn.example.org",
        "turn:turn.example.org:3478",
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
        "turns:turn.example.org:5349?transport=tcp",
        "turns:turn.example.org:443",
        "turn:203.0.113.7:3478",
    ],
)
def test_turn_urls_browsers_and_aiortc_can_use(url: str) -> None:
    assert parse_turn_url(f"  {url} ") == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("stun:stun.example.org", "expected a turn: or turns: URL"),
        ("https://turn.example.org", "expected a turn: or turns: URL"),
        ("turn", "expected a turn: or turns: URL"),
        ("turn://turn.example.org:3478", "has no //"),
        ("turn:[2001:db8::1]:3478", "IPv6"),
        ("turn:", "is not a TURN URL"),
        ("turn:user@turn.example.org", "is not a TURN URL"),
        ("turn:turn.example.org:3478?transport=sctp", "udp or tcp"),
        ("turn:turn.example.org:99999", "no valid port"),
        ("turn:turn.example.org:0", "no valid port"),
        ("turns:turn.example.org:5349?transport=udp", "use ?transport=tcp"),
        ("turn:turn example.org", "is not a TURN URL"),
    ],
)
def test_turn_urls_that_would_fail_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_turn_url(url)


def test_the_secret_file_holds_one_long_word() -> None:
    assert parse_secret(f"\n {SECRET}\n".encode()) == SECRET.encode()
    for data, fragment in [
        (b"", "is empty"),
        (b" \n\t", "is empty"),
        (b"two words-that-are-long-enough", "one word"),
        (b"line-one-long-enough\nline-two", "one word"),
        (b"x" * (MIN_SECRET_BYTES - 1), f"holds {MIN_SECRET_BYTES - 1} bytes"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)) as info:
            parse_secret(data)
        assert not data.strip() or data.decode() not in str(info.value)  # never quoted


def test_neither_the_secret_nor_a_credential_shows_in_a_repr() -> None:
    relay = TurnRelay(("turn:t.example",), SECRET.encode(), TTL_S)
    credential = relay.credential("key1", 0)
    assert SECRET not in repr(relay)
    assert credential.credential not in repr(credential)
    assert credential.username in repr(credential)


@pytest.mark.parametrize("ttl_s", [59, 86_401])
def test_credential_lifetimes_are_bounded(ttl_s: int) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        TurnRelay(("turn:t.example",), SECRET.encode(), ttl_s)


def test_a_relay_has_a_url() -> None:
    with pytest.raises(ValueError, match="URL"):
        TurnRelay((), SECRET.encode(), TTL_S)


# --- GET /config and start-up -------------------------------------------------------------


def secret_file(tmp_path: Path, text: str = SECRET + "\n") -> Path:
    path = tmp_path / "turn-secret"
    path.write_text(text)
    return path


def expected_credential(username: str) -> str:
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def test_config_hands_out_a_fresh_relay_credential(
    gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "turn:turn.example.org:3478?transport=udp"
    client = await gateway(
        ice_servers=("stun:stun.example.org:3478",),
        turn_urls=(url,),
        turn_secret_file=secret_file(tmp_path),
    )
    before = int(time.time())
    response = await client.get("/config")
    after = int(time.time())
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    body = json.loads(text)
    stun, relay = body["ice_servers"]
    assert stun == {"urls": "stun:stun.example.org:3478"}
    assert relay["urls"] == [url]
    expiry, user = relay["username"].split(":")
    assert user == "anonymous"  # --auth none: every client is trusted alike
    assert before + TTL_S <= int(expiry) <= after + TTL_S
    assert relay["credential"] == expected_credential(relay["username"])
    assert body["features"]["turn"] is True
    # The secret goes nowhere; the derived credential only to the client.
    assert SECRET not in text
    assert SECRET not in caplog.text
    assert relay["credential"] not in caplog.text


async def test_only_an_authenticated_client_gets_a_relay_credential(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    url = "turns:turn.example.org:5349?transport=tcp"
    client = await gateway(
        auth="api-key", api_keys_file=keys, turn_urls=(url,), turn_secret_file=secret_file(tmp_path)
    )
    # No credentials: /config stays open (a page reads it before asking for a token), and
    # says that a relay exists, but lists none.
    anonymous = await (await client.get("/config")).json()
    assert anonymous["ice_servers"] == []
    assert (anonymous["features"]["turn"], anonymous["auth"]) == (True, "api-key")

    authorised = await client.get("/config", headers={"Authorization": f"Bearer {API_KEY}"})
    assert authorised.status == 200
    [relay] = (await authorised.json())["ice_servers"]
    assert relay["urls"] == [url]
    assert relay["username"].endswith(":key1")  # bound to the principal
    assert relay["credential"] == expected_credential(relay["username"])

    # A wrong token is refused as on a guarded route, and counts as a guess.
    refused = await client.get("/config", headers={"Authorization": "Bearer not-the-key-0000000"})
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "unauthorized"
    statuses = [
        (await client.get("/config", headers={"Authorization": "Bearer wrong-key-00000"})).status
        for _ in range(AUTH_FAILURE_BURST)
    ]
    assert statuses[-1] == 429, statuses  # the budget ran out: the right key is refused too
    right = await client.get("/config", headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status == 429


async def test_without_a_relay_config_ignores_credentials_as_before(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    client = await gateway(auth="api-key", api_keys_file=keys)
    response = await client.get("/config", headers={"Authorization": "Bearer wrong-key-00000"})
    assert response.status == 200
    body = await response.json()
    assert (body["ice_servers"], body["features"]["turn"]) == ([], False)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("short\n", f"holds 5 bytes; use at least {MIN_SECRET_BYTES}"),
        ("two words that are long enough\n", "one word"),
    ],
    ids=["missing", "empty", "short", "spaces"],
)
def test_an_unusable_secret_file_stops_start_up_naming_the_flag(
    tmp_path: Path, content: str | None, fragment: str
) -> None:
    path = tmp_path / "turn-secret"
    if content is not None:
        path.write_text(content)
    config = Config(no_tls=True, turn_urls=("turn:127.0.0.1:3478",), turn_secret_file=path)
    with pytest.raises(ConfigError) as info:
        build_app(config)
    assert info.value.flag == "--turn-secret-file"
    assert str(info.value).startswith("--turn-secret-file: ")
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


# --- a real coturn on loopback ------------------------------------------------------------


@dataclass(frozen=True)
class Coturn:
    port: int
    relay_ports: tuple[int, int]  # where coturn allocates relayed addresses
    log: Path

    def url(self, transport: str = "udp") -> str:
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def relay(self, secret: str = SECRET, ttl_s: int = TTL_S) -> TurnRelay:
        return TurnRelay((self.url(),), secret.encode(), ttl_s)


def coturn_config(port: int, relay_ports: tuple[int, int], work: Path) -> str:
    """README's turnserver.conf, on loopback: only the addresses and ports differ, and
    loopback peers are allowed (coturn refuses them by default) while every other peer
    address is denied, so that media can only flow relay to relay."""
    return "\n".join(
        [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={port}",
            f"min-port={relay_ports[0]}",
            f"max-port={relay_ports[1]}",
            "use-auth-secret",
            f"static-auth-secret={SECRET}",
            "realm=gateway.test",
            "fingerprint",
            "allow-loopback-peers",
            "no-multicast-peers",
            "denied-peer-ip=0.0.0.0-126.255.255.255",
            "denied-peer-ip=128.0.0.0-255.255.255.255",
            "no-cli",
            "no-tls",
            "no-dtls",
            "no-rfc5780",
            "log-file=stdout",
            "simple-log",
            f"userdb={work / 'turndb'}",  # not the system's /var/lib/turn/turndb
            f"pidfile={work / 'turnserver.pid'}",
            "",
        ]
    )


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def stun_answers(port: int) -> bool:
    """Whether a STUN server answers a Binding request on UDP 127.0.0.1:``port`` (RFC 8489)."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(request, ("127.0.0.1", port))
        try:
            data = sock.recv(2048)
        except OSError:  # a timeout, or ICMP "port unreachable" while it starts
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == transaction


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn on 127.0.0.1 (a free port, no TLS), stopped after the module's tests."""
    if TURNSERVER is None:
        pytest.skip("no turnserver binary: install Debian's coturn (apt-get install coturn)")
    work = tmp_path_factory.mktemp("coturn")
    port = free_port()
    # Above Linux's ephemeral range (32768-60999): no collision with clients' sockets.
    low = random.randrange(61_000, 65_400)
    relay_ports = (low, low + 99)
    conf = work / "turnserver.conf"
    conf.write_text(coturn_config(port, relay_ports, work))
    log = work / "turnserver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TURNSERVER, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not stun_answers(port):
            if process.poll() is not None:
                pytest.fail(f"turnserver exited ({process.returncode}):\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield Coturn(port, relay_ports, log)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


async def allocate(coturn: Coturn, username: str, password: str, transport: str) -> str:
    """An allocation on ``coturn`` with these credentials, as aioice makes it for aiortc
    (and the doctor for its check); returns the relayed address, having given it back."""
    return await allocate_relay(coturn.url(transport), username, password, ALLOCATE_TIMEOUT_S)


@requires_coturn
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_coturn_accepts_a_fresh_credential(coturn: Coturn, transport: str) -> None:
    credential = coturn.relay().credential("key1", time.time())
    address = await allocate(coturn, credential.username, credential.credential, transport)
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert coturn.relay_ports[0] <= int(port) <= coturn.relay_ports[1]


@requires_coturn
async def test_coturn_refuses_an_expired_or_forged_credential(coturn: Coturn) -> None:
    now = time.time()
    expired = coturn.relay().credential("key1", now - TTL_S - 60)  # expired a minute ago
    assert expired.expires < now
    forged = coturn.relay(secret="not-the-shared-secret-at-all-0000").credential("key1", now)
    tampered = coturn.relay().credential("key1", now)
    for username, password in [
        (expired.username, expired.credential),
        (forged.username, forged.credential),
        # The expiry pushed forward by the client: the HMAC no longer matches.
        (f"{tampered.expires + 86_400}:key1", tampered.credential),
    ]:
        with pytest.raises(TransactionFailed) as info:
            await allocate(coturn, username, password, "udp")
        assert info.value.response.attributes["ERROR-CODE"][0] == 401


class Peer(asyncio.DatagramProtocol):
    """A UDP endpoint that keeps what it receives; also told when its transport is lost."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


@requires_coturn
async def test_an_allocation_outlives_its_credential(coturn: Coturn) -> None:
    # Why --turn-ttl-s need not cover a whole session: coturn checks the expiry when the
    # allocation is made, then authenticates the allocation's later requests (permissions,
    # channels, refreshes) with the key it kept.
    relay = coturn.relay(ttl_s=60)
    credential = relay.credential("key1", time.time() - 60 + 2)  # expires in 2 s
    loop = asyncio.get_running_loop()
    sink, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    relayed, client = await asyncio.wait_for(
        create_turn_endpoint(
            Peer, ("127.0.0.1", coturn.port), credential.username, credential.credential
        ),
        ALLOCATE_TIMEOUT_S,
    )
    try:
        await asyncio.sleep(max(0.0, credential.expires - time.time()) + 1.5)
        assert time.time() > credential.expires
        # A new permission and channel for a new peer, asked for with the expired username.
        relayed.sendto(b"still relayed", sink.get_extra_info("sockname"))
        assert await asyncio.wait_for(peer.received.get(), ALLOCATE_TIMEOUT_S) == b"still relayed"
    finally:
        relayed.close()
        sink.close()
        await asyncio.wait_for(client.lost, ALLOCATE_TIMEOUT_S)


@requires_coturn
@pytest.mark.parametrize("policy", ["none", "ice-address and ports"])
async def test_the_gateways_peer_connection_gathers_a_relayed_candidate(
    coturn: Coturn, policy: str
) -> None:
    # Also through the contained ICE adapter (signalling/ice.py), which gathers host
    # candidates itself and leaves the relayed one to aioice.
    low = random.randrange(40_000, 40_900)
    ice = IcePolicy(("127.0.0.1",), (low, low + 20)) if policy != "none" else IcePolicy()
    pc = new_peer_connection([coturn.relay().rtc_ice_server(GATEWAY_USER, time.time())], ice)
    try:
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    relayed = re.findall(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ relay", sdp)
    assert len(relayed) == 1, sdp
    assert coturn.relay_ports[0] <= int(relayed[0]) <= coturn.relay_ports[1]
    if policy != "none":
        hosts = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp)
        assert hosts, sdp
        assert all(h == "127.0.0.1" and low <= int(p) <= low + 20 for h, p in hosts), hosts


@requires_coturn
def test_doctor_allocates_on_each_relay_url(coturn: Coturn, tmp_path: Path) -> None:
    good = Config(
        turn_urls=(coturn.url("udp"), coturn.url("tcp")), turn_secret_file=secret_file(tmp_path)
    )
    checks = check_turn_relay(good)
    assert [c.status for c in checks] == ["ok", "ok"], checks
    assert all("relays (allocated 127.0.0.1:" in c.detail for c in checks)

    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-shared-secret-at-all-0000\n")
    [refused] = check_turn_relay(replace(good, turn_urls=(coturn.url(),), turn_secret_file=wrong))
    assert (refused.status, "401" in refused.detail) == ("fail", True), refused
    assert "static-auth-secret" in refused.fix

    silent = replace(good, turn_urls=(f"turn:127.0.0.1:{free_port()}?transport=udp",))
    [unanswered] = check_turn_relay(silent, timeout_s=1.0)
    assert (unanswered.status, "did not answer" in unanswered.detail) == ("fail", True)

    [unreadable] = check_turn_relay(replace(good, turn_secret_file=tmp_path / "missing"))
    assert unreadable.status == "fail"
    assert unreadable.detail.startswith("--turn-secret-file: cannot read")
    assert check_turn_relay(Config()) == []  # no relay configured: nothing to say


# --- a relay-only Chromium completes a voice turn through coturn ---------------------------

# Test-only, on the gateway's page: fetch /config with the token, then connect as any
# client would, but with relayed candidates only, the fake microphone and an events channel;
# collects the events. Returns both SDPs.
CONNECT_RELAY_ONLY = """async ({ token }) => {
  const auth = { Authorization: `Bearer ${token}` };
  const config = await (await fetch("/config", { headers: auth })).json();
  const pc = new RTCPeerConnection({ iceServers: config.ice_servers, iceTransportPolicy: "relay" });
  window.pc = pc;
  window.events = [];
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  stream.getAudioTracks().forEach((track) => pc.addTrack(track, stream));
  const channel = pc.createDataChannel("events");
  channel.onmessage = (message) => window.events.push(JSON.parse(message.data));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const response = await fetch("/offer", {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  if (!response.ok) throw new Error(`POST /offer: ${response.status} ${await response.text()}`);
  const answer = await response.json();
  await pc.setRemoteDescription(answer);
  return { iceServers: config.ice_servers, offer: pc.localDescription.sdp, answer: answer.sdp };

  function gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
  }
}"""

# The candidate pair the connection uses, as the browser's statistics report it.
SELECTED_PAIR = """async () => {
  const stats = await window.pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = stats.get(s.selectedCandidatePairId);
    }
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
    local: local.candidateType, localAddress: local.address, relayProtocol: local.relayProtocol,
    remote: remote.candidateType, remoteAddress: remote.address,
  };
}"""

# Gathers with the given ICE servers and the relay-only policy; returns the candidates' SDP
# lines (none when the TURN server refuses the credential).
GATHER_RELAY_ONLY = """async ({ iceServers }) => {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: "relay" });
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
  const lines = pc.localDescription.sdp.split("\\r\\n").filter((l) => l.startsWith("a=candidate"));
  pc.close();
  return lines;
}"""


def candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate")]


async def events_of(page: Page) -> list[dict[str, Any]]:
    events = await page.evaluate("() => window.events")
    assert isinstance(events, list)
    return events


@requires_coturn
@requires_chromium
async def test_a_relay_only_browser_completes_a_voice_turn_through_coturn(
    coturn: Coturn,
    gateway: GatewayFactory,
    ollama: tuple[FakeOllama, str],
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(API_KEY + "\n")
    client = await gateway(
        ollama_host=ollama[1],
        auth="api-key",
        api_keys_file=keys,
        turn_urls=(coturn.url(),),
        turn_secret_file=secret_file(tmp_path),
    )
    speech = json.loads((DATA / "speech.json").read_text())["clips"][0]
    wav = fake_microphone_wav(DATA / speech["file"], tmp_path / "mic.wav")

    async with chromium(tmp_path, fake_audio=wav) as context:
        page = await context.new_page()
        await page.goto(str(client.make_url("/")))  # 127.0.0.1 over HTTP: a secure context
        connected = await page.evaluate(CONNECT_RELAY_ONLY, {"token": API_KEY})

        # Both sides offered relayed candidates from coturn, and the browser nothing else.
        [relay] = connected["iceServers"]
        assert relay["urls"] == [coturn.url()]
        assert relay["username"].endswith(":key1")
        offered = candidates(connected["offer"])
        assert offered
        assert all(" typ relay " in line for line in offered), offered
        assert any(" typ relay " in line for line in candidates(connected["answer"]))

        await page.wait_for_function(
            "() => window.events.some((e) => e.type === 'transcript.final')", timeout=30_000
        )
        final = next(e for e in await events_of(page) if e["type"] == "transcript.final")
        assert "weather" in final["text"].lower(), final

        pair = await page.evaluate(SELECTED_PAIR)
        assert pair is not None
        # The browser's end is its relay on coturn; coturn denies every peer address but
        # loopback, so the gateway's end is its own relay on the same coturn.
        assert (pair["state"], pair["local"], pair["remote"]) == ("succeeded", "relay", "relay")
        assert (pair["localAddress"], pair["relayProtocol"]) == ("127.0.0.1", "udp")
        assert pair["bytesSent"] > 10_000  # the utterance went this way
        print(f"\nrelay-only browser: selected pair {pair}; transcript {final['text']!r}")

        # A credential past its time gets no relay from coturn: nothing to connect with.
        expired = coturn.relay().credential("key1", time.time() - TTL_S - 60)
        stale = [expired.ice_server((coturn.url(),))]
        assert await page.evaluate(GATHER_RELAY_ONLY, {"iceServers": stale}) == []
        # The same request with a fresh credential does gather one (the probe can fail).
        fresh = [coturn.relay().ice_server("key1", time.time())]
        gathered = await page.evaluate(GATHER_RELAY_ONLY, {"iceServers": fresh})
        assert gathered
        assert all(" typ relay " in line for line in gathered), gathered
