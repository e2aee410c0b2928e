"""Tests for :mod:`signalling.ice`: real aiortc peers on loopback, real sockets.

Which UDP sockets the process holds is read from /proc (Linux), so "no other socket" means
exactly that, not just what aioice reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, cast

import ifaddr
import pytest
from aioice import Connection, stun
from aioice.ice import get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack

from signalling.errors import IcePolicyError, OfferError
from signalling.ice import (
    IcePolicy,
    PolicyPeerConnection,
    apply_policy,
    check_policy,
    check_versions,
    create_peer_connection,
    resolve_addresses,
)
from signalling.peer import answer_offer

NO_SERVERS = RTCConfiguration(iceServers=[])
ORIGINAL_METHOD = Connection.get_component_candidates
PROC_UDP = [Path("/proc/self/net/udp"), Path("/proc/self/net/udp6")]
needs_proc = pytest.mark.skipif(not PROC_UDP[0].exists(), reason="reads /proc/self/net/udp")


# --- helpers ---


def udp_sockets() -> set[tuple[str, int]]:
    """(address, port) of every UDP socket this process holds (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in PROC_UDP:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.add(_proc_address(fields[1]))
    return found


def _proc_address(text: str) -> tuple[str, int]:
    # /proc prints each 32-bit word of the address in host (little-endian) order.
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(hex_port, 16)


def free_port_range(size: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """A range of ``size`` ports all free on ``host`` now, below Linux's ephemeral range."""
    for _ in range(100):
        lo = random.randrange(20_000, 32_000 - size)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(lo, lo + size):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind((host, port))
            except OSError:
                continue
        return lo, lo + size - 1
    raise RuntimeError("no free port range")


def host_candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of each candidate in an SDP (bundled m-lines repeat them)."""
    found: dict[tuple[str, int, str], None] = {}
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            found[fields[4], int(fields[5]), fields[7]] = None
    return list(found)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def other_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine, which a plain aiortc peer gathers."""
    addresses = get_host_addresses(use_ipv4=True, use_ipv6=False)
    return addresses[0] if addresses else None


@contextlib.contextmanager
def occupied(host: str, ports: tuple[int, int]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for port in range(ports[0], ports[1] + 1):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((host, port))
        yield


async def client_offer(config: RTCConfiguration = NO_SERVERS) -> tuple[RTCPeerConnection, str]:
    """A plain aiortc peer, as a browser: microphone track and data channel, all gathered."""
    client = RTCPeerConnection(configuration=config)
    client.addTrack(AudioStreamTrack())
    client.createDataChannel("events")
    await client.setLocalDescription(await client.createOffer())
    return client, client.localDescription.sdp


def ice_connection(pc: RTCPeerConnection) -> Connection:
    transport = pc.getTransceivers()[0].receiver.transport.transport
    connection: Connection = transport.iceGatherer._connection
    return connection


# --- the answer under a policy ---


@needs_proc
async def test_answer_carries_only_the_policy_addresses_and_ports() -> None:
    addresses = ("127.0.0.1", "::1") if has_ipv6_loopback() else ("127.0.0.1",)
    lo, hi = free_port_range(21)
    client, offer = await client_offer()
    before = udp_sockets()
    pc = create_peer_connection(NO_SERVERS, IcePolicy(addresses=addresses, ports=(lo, hi)))
    assert isinstance(pc, PolicyPeerConnection)
    try:
        answer = await answer_offer(pc, offer)
        candidates = host_candidates(answer)
        assert {(host, kind) for host, _, kind in candidates} == {(a, "host") for a in addresses}
        assert all(lo <= port <= hi for _, port, _ in candidates)
        # No other local address appears anywhere in the answer (c= lines included).
        for address in get_host_addresses(use_ipv4=True, use_ipv6=True):
            assert address not in answer
        # The process gained exactly these sockets, and aioice holds exactly these.
        assert udp_sockets() - before == {(host, port) for host, port, _ in candidates}
        socknames = {
            p.transport.get_extra_info("sockname")[:2] for p in ice_connection(pc)._protocols
        }
        assert socknames == {(host, port) for host, port, _ in candidates}
    finally:
        await pc.close()
        await client.close()
    assert udp_sockets() - before == set(), "sockets left open after close()"


async def test_policy_peer_connects_to_a_plain_aiortc_peer() -> None:
    if other_ipv4() is None:  # aioice never gathers loopback for the plain peer
        pytest.skip("needs a non-loopback IPv4 address for the plain aiortc peer")
    lo, hi = free_port_range(21)
    client, offer = await client_offer()
    pc = create_peer_connection(NO_SERVERS, IcePolicy(addresses=("127.0.0.1",), ports=(lo, hi)))
    connected = asyncio.Event()
    channel_open = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    @pc.on("datachannel")
    def on_channel(channel: object) -> None:
        channel_open.set()

    try:
        answer = await answer_offer(pc, offer)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(asyncio.gather(connected.wait(), channel_open.wait()), 15)
        assert pc.connectionState == "connected"
        assert client.connectionState == "connected"
    finally:
        await pc.close()
        await client.close()


async def test_server_reflexive_candidates_come_from_the_policy_sockets() -> None:
    # A one-message STUN server on loopback, recording where each request came from.
    sources: list[tuple[str, int]] = []

    class StunServer(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            request = stun.parse_message(data)
            sources.append(addr)
            response = stun.Message(
                message_method=request.message_method,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            self.transport.sendto(bytes(response), addr)

    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(StunServer, local_addr=("127.0.0.1", 0))
    stun_port = server.get_extra_info("sockname")[1]
    lo, hi = free_port_range(21)
    client, offer = await client_offer()
    config = RTCConfiguration(iceServers=[RTCIceServer(urls=f"stun:127.0.0.1:{stun_port}")])
    pc = create_peer_connection(config, IcePolicy(addresses=("127.0.0.1",), ports=(lo, hi)))
    try:
        candidates = host_candidates(await answer_offer(pc, offer))
        host = [(a, p) for a, p, kind in candidates if kind == "host"]
        assert [kind for _, _, kind in candidates].count("srflx") == 1
        assert sources == host  # the query left from the policy socket
    finally:
        await pc.close()
        await client.close()
        server.close()


# --- port range exhaustion ---


@needs_proc
async def test_exhausted_port_range_fails_the_negotiation_clearly() -> None:
    # With a second address, the first one's socket (bound fine) must be closed too.
    second = other_ipv4()
    addresses = ("127.0.0.1", second) if second else ("127.0.0.1",)
    blocked_host = addresses[-1]
    lo, hi = free_port_range(3, blocked_host)
    client, offer = await client_offer()
    with occupied(blocked_host, (lo, hi)):
        before = udp_sockets()
        pc = create_peer_connection(NO_SERVERS, IcePolicy(addresses=addresses, ports=(lo, hi)))
        try:
            with pytest.raises(
                OfferError, match=rf"no free UDP port in {lo}-{hi} on {blocked_host}"
            ):
                await answer_offer(pc, offer)
        finally:
            await pc.close()
            await client.close()
        assert udp_sockets() - before == set()


async def test_a_free_port_is_found_in_a_partly_occupied_range() -> None:
    lo, hi = free_port_range(5)
    client, offer = await client_offer()
    with occupied("127.0.0.1", (lo, hi - 1)):
        pc = create_peer_connection(NO_SERVERS, IcePolicy(addresses=("127.0.0.1",), ports=(lo, hi)))
        try:
            assert host_candidates(await answer_offer(pc, offer)) == [("127.0.0.1", hi, "host")]
        finally:
            await pc.close()
            await client.close()


# --- nothing outlives a failed or cancelled gathering ---


@pytest.mark.parametrize("how", ["raises", "cancelled"])
async def test_a_socket_is_closed_when_its_endpoint_cannot_be_made(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    bound: list[socket.socket] = []
    entered = asyncio.Event()

    async def endpoint(factory: object, *, sock: socket.socket) -> NoReturn:
        bound.append(sock)
        if how == "raises":
            raise OSError(errno.ENOBUFS, "No buffer space available")
        entered.set()
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("not reached")

    monkeypatch.setattr(loop, "create_datagram_endpoint", endpoint)
    connection = Connection(ice_controlling=False)
    apply_policy(connection, IcePolicy(addresses=("127.0.0.1",), ports=free_port_range(3)))
    gathering = asyncio.create_task(
        connection.get_component_candidates(component=1, addresses=[], timeout=1)
    )
    if how == "cancelled":
        await entered.wait()
        gathering.cancel()
    try:
        with pytest.raises(OSError if how == "raises" else asyncio.CancelledError):
            await gathering
        assert len(bound) == 1
        assert bound[0].fileno() == -1  # closed, not left to the garbage collector
    finally:
        await connection.close()


async def test_stun_queries_end_when_the_gathering_is_cancelled() -> None:
    # A STUN server that never answers: aioice's query would retransmit for seconds.
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()

    class Silent(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            asked.set()

    server, _ = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", 0))
    connection = Connection(
        ice_controlling=False, stun_server=("127.0.0.1", server.get_extra_info("sockname")[1])
    )
    apply_policy(connection, IcePolicy(addresses=("127.0.0.1",)))
    gathering = asyncio.create_task(
        connection.get_component_candidates(component=1, addresses=[], timeout=30)
    )
    try:
        await asyncio.wait_for(asked.wait(), 5)
        gathering.cancel()  # as a negotiation timeout does
        with pytest.raises(asyncio.CancelledError):
            await gathering
        queries = [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__name__", "") == "server_reflexive_candidate"
        ]
        assert queries == []
    finally:
        await connection.close()
        server.close()


# --- without a policy, nothing changes ---


async def test_connections_without_the_policy_are_unaffected() -> None:
    plain = create_peer_connection(NO_SERVERS, IcePolicy())
    assert type(plain) is RTCPeerConnection
    lo, hi = free_port_range(21)
    policed = create_peer_connection(NO_SERVERS, IcePolicy(("127.0.0.1",), (lo, hi)))
    (client_a, offer_a), (client_b, offer_b) = await client_offer(), await client_offer()
    try:
        # Gathering side by side in one loop: the policy stays on its own connection.
        answer_plain, answer_policed = await asyncio.gather(
            answer_offer(plain, offer_a), answer_offer(policed, offer_b)
        )
        expected = set(get_host_addresses(use_ipv4=True, use_ipv6=True))
        assert {host for host, _, _ in host_candidates(answer_plain)} == expected
        assert {host for host, _, _ in host_candidates(answer_policed)} == {"127.0.0.1"}
        assert "get_component_candidates" not in vars(ice_connection(plain))
        assert Connection.get_component_candidates is ORIGINAL_METHOD
    finally:
        for pc in (plain, policed, client_a, client_b):
            await pc.close()


async def test_ports_alone_keep_aiois_addresses() -> None:
    # Only a port range: the addresses stay aioice's (all but loopback), the ports move.
    lo, hi = free_port_range(41, other_ipv4() or "127.0.0.1")
    client, offer = await client_offer()
    pc = create_peer_connection(NO_SERVERS, IcePolicy(ports=(lo, hi)))
    try:
        candidates = host_candidates(await answer_offer(pc, offer))
        expected = set(get_host_addresses(use_ipv4=True, use_ipv6=True))
        assert {host for host, _, _ in candidates} == expected
        assert all(lo <= port <= hi for _, port, _ in candidates)
    finally:
        await pc.close()
        await client.close()


# --- configuration ---


def test_an_interface_name_resolves_to_its_addresses() -> None:
    loopback = next(
        (a for a in ifaddr.get_adapters() if any(ip.ip == "127.0.0.1" for ip in a.ips)), None
    )
    if loopback is None:
        pytest.skip("no interface carries 127.0.0.1")
    resolved = resolve_addresses(IcePolicy(addresses=(loopback.name,)))
    assert resolved[0] == "127.0.0.1"
    assert all(not ipaddress.ip_address(a).is_link_local for a in resolved)
    # Addresses and names mix; duplicates collapse, order is kept.
    assert resolve_addresses(IcePolicy(addresses=("127.0.0.1", loopback.name))) == resolved
    assert resolve_addresses(IcePolicy()) == []


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("wg-nonexistent9", "neither an IP address nor a network interface"),
        ("203.0.113.7", "not an address of this machine"),
        ("0.0.0.0", "means every address"),
        ("fe80::1", "link-local"),
    ],
)
def test_a_bad_address_is_a_policy_error_naming_it(entry: str, reason: str) -> None:
    with pytest.raises(IcePolicyError, match=reason) as caught:
        resolve_addresses(IcePolicy(addresses=("127.0.0.1", entry)))
    assert caught.value.flag == "--ice-address"
    assert entry in str(caught.value)


def test_check_policy_at_startup() -> None:
    assert check_policy(IcePolicy()) == []  # inactive: aioice is not even looked at
    assert check_policy(IcePolicy(("127.0.0.1",), (50_000, 50_010))) == ["127.0.0.1"]
    with pytest.raises(IcePolicyError, match="LO <= HI") as caught:
        check_policy(IcePolicy(ports=(50_010, 50_000)))
    assert caught.value.flag == "--udp-ports"


@pytest.mark.parametrize(
    ("aioice", "aiortc", "refused"),
    [
        ("0.12.0", "1.16.0", None),
        ("0.13.0", "1.16.3", None),
        ("0.11.0", "1.16.0", "aioice 0.11.0"),
        ("0.14.0", "1.16.0", "aioice 0.14.0"),
        ("1.0.0", "1.16.0", "aioice 1.0.0"),
        ("0.13.0", "1.17.0", "aiortc 1.17.0"),
        ("0.13.0", "dev", "aiortc dev"),
    ],
)
def test_untested_versions_are_refused(aioice: str, aiortc: str, refused: str | None) -> None:
    installed = {"aioice": aioice, "aiortc": aiortc}
    if refused is None:
        check_versions(installed)
        return
    with pytest.raises(IcePolicyError, match=refused):
        check_versions(installed)


def test_the_installed_versions_are_tested_ones() -> None:
    check_versions()


async def test_renegotiation_wraps_a_connection_once() -> None:
    # Renegotiation: a second setLocalDescription must not re-wrap a gathered connection.
    lo, hi = free_port_range(21)
    client, offer = await client_offer()
    pc = create_peer_connection(NO_SERVERS, IcePolicy(("127.0.0.1",), (lo, hi)))
    try:
        await answer_offer(pc, offer)
        wrapped = vars(ice_connection(pc))["get_component_candidates"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert vars(ice_connection(pc))["get_component_candidates"] is wrapped
    finally:
        await pc.close()
        await client.close()
