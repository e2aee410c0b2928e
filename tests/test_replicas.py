"""Several gateways behind a real load balancer (issue 12).

The pieces: session ids that name their replica (``signalling/registry.py``), the client's
address behind trusted proxies (``signalling/proxies.py``, ``gateway/http/forwarded.py``)
and their options. Then Debian's HAProxy running ``examples/haproxy/haproxy.cfg`` itself
(its addresses and files set through the environment, as the file allows) on loopback in
front of two gateway processes, TLS on both hops: offers from real aiortc peers are
balanced over both replicas, each session's routes reach the replica that holds it,
``/ready`` takes a draining replica out of the rotation while its sessions stay reachable,
and the address HAProxy forwards is the one the gateway counts and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import pwd
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bench.soak import free_port, gateway_process, read_metrics
from certs.authority import ensure_certificates
from gateway.errors import ConfigError
from gateway.ops.config import load_config
from gateway.testing.loopback import LoopbackClient
from gateway.testing.ollama_server import FakeOllama, fake_ollama
from signalling.proxies import ProxyNetwork, forwarded_client, parse_trusted_proxy
from signalling.registry import new_session_id, parse_replica_id
from tests.conftest import GatewayFactory
from tests.sse import EventStream
from tests.test_conversation import WsPeer

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "examples" / "haproxy" / "haproxy.cfg"
HAPROXY = "/usr/sbin/haproxy"
NO_HAPROXY = "no /usr/sbin/haproxy: install Debian's haproxy (apt-get install haproxy)"
HAVE_HAPROXY = Path(HAPROXY).exists()
requires_haproxy = pytest.mark.skipif(not HAVE_HAPROXY, reason=NO_HAPROXY)
REPLICAS = ("gw1", "gw2")  # the example's backends
START_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 10.0  # HAProxy's view of a replica follows within a few checks (1 s)


# --- session ids name their replica -------------------------------------------------------


def test_a_session_id_names_its_replica_before_the_first_dot() -> None:
    ids = {new_session_id("gw-1") for _ in range(200)}
    assert len(ids) == 200
    for session_id in ids:
        replica, dot, token = session_id.partition(".")
        assert (replica, dot) == ("gw-1", ".")
        assert len(token) == 22  # 128 bits in urlsafe base64, which has no "."
        assert "." not in token


@pytest.mark.parametrize("replica", [None, ""])
def test_without_a_replica_an_id_is_the_token_alone(replica: str | None) -> None:
    session_id = new_session_id(replica)
    assert len(session_id) == 22
    assert re.fullmatch(r"[A-Za-z0-9_-]+", session_id)


@pytest.mark.parametrize("name", ["a", "0", "gw1", "eu-west-3", "9-lives", "x" * 32])
def test_replica_names_that_are_accepted(name: str) -> None:
    assert parse_replica_id(name) == name


@pytest.mark.parametrize(
    "name", ["", "-gw", "GW1", "gw_1", "gw.1", "gw 1", "gw1\n", "x" * 33, "gw/1", "é"]
)
def test_replica_names_that_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="1-32 characters of a-z, 0-9 and '-'"):
        parse_replica_id(name)
    if name:  # an empty name is no replica (the default)
        with pytest.raises(ValueError, match=re.escape(repr(name))):
            new_session_id(name)


# --- the options --------------------------------------------------------------------------


def test_replica_id_from_each_source(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('replica_id = "from-toml"\n', encoding="utf-8")
    assert load_config([], {}).replica_id == ""
    assert load_config(["--config", str(toml)], {}).replica_id == "from-toml"
    env = {"GATEWAY_REPLICA_ID": "from-env"}
    assert load_config(["--config", str(toml)], env).replica_id == "from-env"
    assert load_config(["--replica-id", "gw2", "--config", str(toml)], env).replica_id == "gw2"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--replica-id", "Gw1"], {}),
        ([], {"GATEWAY_REPLICA_ID": "gw.1"}),
        ([], {"GATEWAY_REPLICA_ID": ""}),  # a name left out of a template: not silently none
    ],
)
def test_a_bad_replica_id_names_the_flag(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    assert info.value.flag == "--replica-id"
    assert str(info.value).startswith("--replica-id: expected 1-32 characters")


def test_trusted_proxies_from_each_source(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('trusted_proxies = ["10.0.0.0/24", "fd00::1"]\n', encoding="utf-8")
    assert load_config([], {}).trusted_proxies == ()
    from_toml = load_config(["--config", str(toml)], {}).trusted_proxies
    assert from_toml == (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::1"))
    env = {"GATEWAY_TRUSTED_PROXIES": "192.0.2.1, 192.0.2.2"}
    assert [str(n) for n in load_config([], env).trusted_proxies] == [
        "192.0.2.1/32",
        "192.0.2.2/32",
    ]
    argv = ["--trusted-proxy", "127.0.0.1", "--trusted-proxy", "::1"]
    flags = load_config([*argv, "--config", str(toml)], env).trusted_proxies
    assert [str(n) for n in flags] == ["127.0.0.1/32", "::1/128"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("proxy.example", "expected an IP address or CIDR network, got 'proxy.example'"),
        ("10.0.0.0/33", "expected an IP address or CIDR network"),
        ("10.0.0.5/24", "'10.0.0.5/24' has host bits set"),
        ("", "expected an IP address or CIDR network"),
    ],
)
def test_a_bad_trusted_proxy_names_the_flag(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(["--trusted-proxy", value], {})
    assert info.value.flag == "--trusted-proxy"
    assert fragment in str(info.value)


# --- who the client is behind proxies -----------------------------------------------------

LB = [parse_trusted_proxy("10.0.0.5")]
LAN = [parse_trusted_proxy("10.0.0.0/24"), parse_trusted_proxy("fd00::/64")]

FORWARDED = [
    # peer, X-Forwarded-For values, trusted, the client
    ("10.0.0.5", ["203.0.113.9"], [], "10.0.0.5"),  # no --trusted-proxy: header ignored
    ("198.51.100.7", ["203.0.113.9"], LB, "198.51.100.7"),  # not a proxy: cannot spoof
    ("10.0.0.5", ["203.0.113.9"], LB, "203.0.113.9"),
    ("10.0.0.5", [], LB, "10.0.0.5"),  # a proxy's own request
    ("10.0.0.5", [""], LB, "10.0.0.5"),
    # A client wrote the left part; the proxy appended what it saw.
    ("10.0.0.5", ["198.51.100.1, 203.0.113.9"], LB, "203.0.113.9"),
    ("10.0.0.5", ["198.51.100.1", "203.0.113.9"], LB, "203.0.113.9"),  # two header lines
    # Two trusted hops: the client is the first untrusted address from the right.
    ("10.0.0.5", ["198.51.100.1,203.0.113.9 , 10.0.0.7"], LAN, "203.0.113.9"),
    ("10.0.0.5", ["10.0.0.8, 10.0.0.7"], LAN, "10.0.0.8"),  # all trusted: the left-most
    # A client may pose as a trusted proxy on the left: the right-most untrusted wins.
    ("10.0.0.5", ["203.0.113.66, 10.0.0.9, 203.0.113.9"], LAN, "203.0.113.9"),
    # What a trusted proxy wrote is not an address: the proxy stays the client.
    ("10.0.0.5", ["unknown"], LB, "10.0.0.5"),
    ("10.0.0.5", ["203.0.113.9, 10.0.0.7, garbage"], LAN, "10.0.0.5"),
    ("10.0.0.5", ["203.0.113.9, _hidden, 10.0.0.7"], LAN, "10.0.0.7"),
    # Ports, IPv6, and a dual-stack socket's view of an IPv4 proxy.
    ("10.0.0.5", ["203.0.113.9:4711"], LB, "203.0.113.9"),
    ("10.0.0.5", ["[2001:db8::1]:4711"], LB, "2001:db8::1"),
    ("10.0.0.5", ["2001:DB8:0::1"], LB, "2001:db8::1"),
    ("fd00::2", ["2001:db8::1"], LAN, "2001:db8::1"),
    ("::ffff:10.0.0.5", ["203.0.113.9"], LB, "203.0.113.9"),
    # No address at all (a Unix socket, or none known).
    ("/run/gateway.sock", ["203.0.113.9"], LB, "/run/gateway.sock"),
    (None, ["203.0.113.9"], LB, None),
]


@pytest.mark.parametrize(("peer", "header", "trusted", "client"), FORWARDED)
def test_the_client_behind_trusted_proxies(
    peer: str | None, header: list[str], trusted: list[ProxyNetwork], client: str | None
) -> None:
    assert forwarded_client(peer, header, trusted) == client


async def test_per_client_limits_count_the_forwarded_address(gateway: GatewayFactory) -> None:
    """Behind a trusted proxy, two people are two clients; a header from anyone else (here,
    the same loopback peer, not trusted) changes nothing."""
    trusted = (parse_trusted_proxy("127.0.0.1"),)
    behind = await gateway(sessions_per_client=1, trusted_proxies=trusted)
    first = await behind.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.1"})
    second = await behind.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.2"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await behind.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.1"})
    assert refused.value.status == 429
    await first.close()
    await second.close()

    direct = await gateway(sessions_per_client=1)
    held = await direct.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.1"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as spoofed:
        await direct.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.2"})
    assert spoofed.value.status == 429
    await held.close()


def test_the_example_config_names_a_backend_per_replica() -> None:
    """The session routes' backends are the replicas' names, as the test below runs them."""
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    assert re.findall(r"^backend replica-(\S+)$", text, re.MULTILINE) == list(REPLICAS)
    assert "use_backend replica-%[path,field(3,/),field(1,.)]" in text


# --- a real HAProxy in front of two gateway processes --------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    http: aiohttp.ClientSession  # straight to the replica, not through HAProxy
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """HAProxy with the example's file in front of the replicas, for the module's tests."""

    url: str  # HAProxy's frontend
    trust: ssl.SSLContext  # the gateways' CA
    stats: Path  # HAProxy's stats socket
    ollama: FakeOllama
    ollama_url: str
    certs: Path
    work: Path
    stack: contextlib.AsyncExitStack  # what stops the replicas at the module's end
    replicas: dict[str, Replica] = field(default_factory=dict)

    async def start(self, name: str, port: int) -> Replica:
        """Replica ``name`` (``python -m gateway serve``, TLS) on ``port``, once ready."""
        log = self.work / f"{name}-{time.monotonic_ns()}.log"
        flags = [
            "--replica-id", name,
            "--trusted-proxy", "127.0.0.1",  # where HAProxy connects from
            "--log-level", "info",  # the session lines name the client
            "--drain-timeout-s", "30",
        ]  # fmt: skip
        process = gateway_process(
            self.ollama_url, 8, log, port=port, cert_dir=self.certs, extra_args=flags
        )
        proc, http = await self.stack.enter_async_context(process)
        self.replicas[name] = replica = Replica(name, port, proc, http, log)
        return replica

    def client(self, source: str = "127.0.0.1") -> aiohttp.ClientSession:
        """An HTTPS client of the balancer, connecting from ``source`` (any 127.0.0.0/8)."""
        connector = aiohttp.TCPConnector(ssl=self.trust, local_addr=(source, 0))
        return aiohttp.ClientSession(self.url, connector=connector)

    async def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) → UP, DOWN, ... as HAProxy's ``show stat`` says."""
        reader, writer = await asyncio.open_unix_connection(self.stats)
        try:
            writer.write(b"show stat\n")
            await writer.drain()
            text = (await reader.read()).decode()
        finally:
            writer.close()
            await writer.wait_closed()
        lines = [line for line in text.splitlines() if line]
        header = lines[0].removeprefix("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {
            (row["pxname"], row["svname"]): row["status"]
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def until_state(self, backend: str, server: str, state: str) -> None:
        deadline = time.monotonic() + CHECK_TIMEOUT_S
        while (now := (await self.server_states()).get((backend, server))) != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy's {backend}/{server} is {now}, not {state}")
            await asyncio.sleep(0.1)


def haproxy_env(work: Path, port: int, ports: dict[str, int], certs: Path) -> dict[str, str]:
    """What examples/haproxy/haproxy.cfg reads from its environment, for loopback."""
    lb_pem = work / "lb.pem"
    server = (certs / "server.pem").read_text() + (certs / "server-key.pem").read_text()
    lb_pem.write_text(server)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LB_BIND": f"127.0.0.1:{port}",
        "LB_CERT": str(lb_pem),
        "LB_CA": str(certs / "rootCA.pem"),
        "LB_STATS": str(work / "haproxy.sock"),
        "LB_USER": pwd.getpwuid(os.getuid()).pw_name,
        "LB_GROUP": grp.getgrgid(os.getgid()).gr_name,
        **{f"{name.upper()}_ADDR": f"127.0.0.1:{p}" for name, p in ports.items()},
    }


@contextlib.asynccontextmanager
async def haproxy(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """HAProxy in the foreground with the example's file; stopped (SIGTERM) on exit."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            HAPROXY, "-db", "-f", str(HAPROXY_CFG), env=env, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Two replicas and HAProxy, started once for the module (seconds of model loading)."""
    if not HAVE_HAPROXY:
        pytest.skip(NO_HAPROXY)
    work = tmp_path_factory.mktemp("replicas")
    certs = work / "certs"  # one CA: HAProxy's certificate and both replicas'
    await asyncio.to_thread(ensure_certificates, certs, ["localhost", "127.0.0.1", "::1"])
    trust = ssl.create_default_context(cafile=certs / "rootCA.pem")
    ports = {name: free_port() for name in REPLICAS}
    lb_port = free_port()
    env = await asyncio.to_thread(haproxy_env, work, lb_port, ports, certs)
    async with contextlib.AsyncExitStack() as stack:
        state, ollama_url = await stack.enter_async_context(fake_ollama())
        cluster = Cluster(
            f"https://127.0.0.1:{lb_port}",
            trust,
            Path(env["LB_STATS"]),
            state,
            ollama_url,
            certs,
            work,
            stack,
        )
        for name, port in ports.items():
            await cluster.start(name, port)
        log = work / "haproxy.log"
        proxy = await stack.enter_async_context(haproxy(env, log))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proxy.returncode is not None:
                pytest.fail(f"haproxy exited ({proxy.returncode}):\n{log.read_text()}")
            with contextlib.suppress(OSError, IndexError):
                states = await cluster.server_states()
                if all(states.get(("gateways", name)) == "UP" for name in REPLICAS):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"haproxy not serving within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        yield cluster


async def offer_through(http: aiohttp.ClientSession) -> tuple[LoopbackClient, dict[str, Any]]:
    """A real aiortc peer's offer through the balancer; returns once its channel is ready."""
    peer = LoopbackClient()
    try:
        async with http.post("/offer", json={"sdp": await peer.offer(), "type": "offer"}) as r:
            assert r.status == 200, await r.text()
            answer: dict[str, Any] = await r.json()
            assert r.headers["Location"] == f"/sessions/{answer['session_id']}"
        await peer.accept(answer)
        ready = await peer.next_event("session.ready", within=10)
        assert ready["session_id"] == answer["session_id"]
    except BaseException:
        await peer.close()
        raise
    return peer, answer


def replica_of(session_id: str) -> str:
    return session_id.partition(".")[0]


async def active_sessions(replica: Replica) -> float:
    return (await read_metrics(replica.http)).sessions


async def close_all(peers: Sequence[LoopbackClient]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers))


# The tests on the cluster run on its event loop, the module's.


@requires_haproxy
@pytest.mark.asyncio(loop_scope="module")
async def test_offers_are_balanced_and_each_session_is_reached_on_its_replica(
    cluster: Cluster,
) -> None:
    before = {name: await active_sessions(r) for name, r in cluster.replicas.items()}
    peers: list[LoopbackClient] = []
    async with cluster.client() as http:
        try:
            answers = []
            for _ in range(4):
                peer, answer = await offer_through(http)
                peers.append(peer)
                answers.append(answer)
            ids = [a["session_id"] for a in answers]
            assert {replica_of(i) for i in ids} == set(REPLICAS), ids
            for name, replica in cluster.replicas.items():
                held = sum(replica_of(i) == name for i in ids)
                assert await active_sessions(replica) == before[name] + held, name

            # Each session's events, through the balancer, come from the replica holding it.
            for name in REPLICAS:
                answer = next(a for a in answers if replica_of(a["session_id"]) == name)
                path = f"/sessions/{answer['session_id']}/events"
                params = {"token": answer["events_token"]}
                async with http.get(path, params=params) as response:
                    assert response.status == 200
                    first = await EventStream(response).next()
                assert first.data["type"] == "session.ready"
                assert first.data["session_id"] == answer["session_id"]

            for session_id in ids:
                async with http.delete(f"/sessions/{session_id}") as response:
                    assert response.status == 204, (session_id, await response.text())
                async with http.delete(f"/sessions/{session_id}") as response:
                    assert response.status == 404, session_id  # gone, on its own replica
            for name, replica in cluster.replicas.items():
                assert await active_sessions(replica) == before[name], name

            # An id that names no replica falls through to the balanced backend: a replica's
            # own 404, not an error of the balancer's.
            for session_id in ("gw9.x", ids[0].partition(".")[2]):
                async with http.delete(f"/sessions/{session_id}") as response:
                    assert response.status == 404, session_id
                    assert (await response.json())["error"]["code"] == "not_found"
        finally:
            await close_all(peers)


@requires_haproxy
@pytest.mark.asyncio(loop_scope="module")
async def test_a_draining_replica_leaves_the_rotation_and_keeps_its_sessions(
    cluster: Cluster,
) -> None:
    """SIGTERM: gw2's /ready is 503 at once while a reply finishes; HAProxy stops sending it
    offers, yet a request for one of its sessions still reaches it. Started again, it is
    back in the rotation once ready."""
    gw2 = cluster.replicas["gw2"]
    ollama = cluster.ollama
    usual = (ollama.reply, ollama.token_interval_s)
    ollama.reply = lambda _: " ".join(f"word{i}" for i in range(40))
    ollama.token_interval_s = 0.5  # 20 s of answer: the drain waits for it
    peers: list[LoopbackClient] = []
    ids: list[str] = []
    busy = WsPeer(await gw2.http.ws_connect("/ws"))
    try:
        ready = await busy.next("session.ready")
        assert replica_of(ready["session_id"]) == "gw2"
        await busy.ws.send_json({"type": "text", "text": "talk for a while"})
        await busy.next("reply.delta")

        gw2.proc.send_signal(signal.SIGTERM)
        await cluster.until_state("gateways", "gw2", "DOWN")
        assert (await cluster.server_states())[("replica-gw2", "gw2")] == "UP"  # /health

        async with cluster.client() as http:
            for _ in range(3):
                peer, answer = await offer_through(http)
                peers.append(peer)
                ids.append(answer["session_id"])
            assert [replica_of(i) for i in ids] == ["gw1"] * 3, ids
            # The draining replica's session is still its own to end, through the balancer.
            async with http.delete(f"/sessions/{ready['session_id']}") as response:
                assert response.status == 204
            assert (await busy.next("session.ended"))["reason"] == "client"
            assert await asyncio.wait_for(gw2.proc.wait(), 20) == 0
            for session_id in ids:
                async with http.delete(f"/sessions/{session_id}") as response:
                    assert response.status == 204
    finally:
        ollama.reply, ollama.token_interval_s = usual
        await close_all(peers)
        await busy.ws.close()

    await cluster.start("gw2", gw2.port)
    await cluster.until_state("gateways", "gw2", "UP")


@requires_haproxy
@pytest.mark.asyncio(loop_scope="module")
async def test_the_address_haproxy_forwards_is_the_client_the_gateway_sees(
    cluster: Cluster,
) -> None:
    """A client at 127.0.0.2 that claims another address: through HAProxy (a trusted proxy)
    the gateway logs 127.0.0.2, the address its limits count; straight to a replica from
    127.0.0.3 (not a proxy), the header is ignored and the connection's address counts."""
    claim = {"X-Forwarded-For": "203.0.113.9"}
    async with cluster.client("127.0.0.2") as http:
        # As the built-in page would: its origin is the balancer's, which the replica
        # recognises as its own (it sees the browser's Host, over TLS).
        page = {**claim, "Origin": cluster.url}
        peer = WsPeer(await http.ws_connect("/ws", headers=page))
        session_id = (await peer.next("session.ready"))["session_id"]
        await peer.ws.close()
    replica = cluster.replicas[replica_of(session_id)]
    await until_logged(replica.log, f"[{session_id}] WebSocket session for 127.0.0.2")

    connector = aiohttp.TCPConnector(ssl=cluster.trust, local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as direct:
        peer = WsPeer(await direct.ws_connect(f"{replica.url}/ws", headers=claim))
        session_id = (await peer.next("session.ready"))["session_id"]
        await peer.ws.close()
    await until_logged(replica.log, f"[{session_id}] WebSocket session for 127.0.0.3")
    assert "203.0.113.9" not in await asyncio.to_thread(replica.log.read_text)


async def until_logged(log: Path, line: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while line not in await asyncio.to_thread(log.read_text):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not in {log}")
        await asyncio.sleep(0.05)
