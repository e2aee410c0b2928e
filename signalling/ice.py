"""Which local addresses and UDP ports the gateway's ICE agent uses (``--ice-address``,
``--udp-ports``).

aioice has no public API for this (aiortc#487, aioice#2, aioice#47): every
``aioice.Connection`` binds one UDP socket with an OS-chosen port on every address of every
interface, skipping only 127.0.0.1 and ::1. A gateway meant for its WireGuard address then
also answers on the LAN and lists every local address in every SDP answer.

How the adapter works, and the aioice internals it relies on (the same in aioice 0.12 and
0.13, see ``TESTED``):

* ``Connection.gather_candidates()`` makes the address list (``get_host_addresses``, or none
  under the relay transport policy) and calls ``self.get_component_candidates(component=...,
  addresses=..., timeout=...)`` once per component. That method binds a socket per address
  (``local_addr=(address, 0)``), wraps it in a ``StunProtocol``, makes the host candidate,
  appends the protocol to ``self._protocols`` (``close()`` closes them all), then asks the
  STUN server for server-reflexive candidates and the TURN server for a relayed one.
* We replace ``get_component_candidates`` *on the one Connection instance* (never on the
  class or the module) with ``_gather_component``: it binds the policy's addresses inside the
  port range itself, makes the same candidates, registers the protocols in ``_protocols`` so
  that ``close()`` still closes them, queries STUN as aioice does, and lets the original
  method gather the TURN candidate (called with no addresses, it binds no host socket).
* aiortc makes the Connection inside ``RTCIceGatherer.__init__`` (from a private method of
  RTCPeerConnection), but gathers only in ``setLocalDescription``. ``PolicyPeerConnection``
  applies the policy to each of its gatherers just before that, reaching them the way
  aiortc's own ``close()`` does (transceivers and SCTP). Peer connections made without a
  policy are plain ``RTCPeerConnection``s and gather exactly as before.

A TURN relay (``--turn-url``) works under a policy: the relayed candidate is gathered by
aioice's own code on both paths above (tests/test_turn.py checks it against a real coturn).

Not covered: the TURN client's socket (aioice binds it to the wildcard address and the OS
picks the route to the TURN server; it talks only to that server, which it contacts first,
so no inbound firewall rule concerns it), and the process-wide mDNS socket (UDP 5353) that
aioice opens only to resolve ``.local`` candidates a browser sends when it hides its
addresses.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import ifaddr
from aioice import Candidate, Connection, TransportPolicy
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signalling.errors import IcePolicyError, OfferError
from signalling.tasks import CANCEL_TIMEOUT_S
from signalling.versions import AIORTC_TESTED, Tested, untested_release

logger = logging.getLogger(__name__)

ADDRESS_FLAG = "--ice-address"
PORTS_FLAG = "--udp-ports"

# Versions this adapter was tested against, as [lowest, first untested) (major, minor) pairs.
# It replaces an aioice method and reads aioice/aiortc private attributes, so an untested
# release is refused at startup rather than trusted to leak nothing.
TESTED: Tested = {
    "aioice": ((0, 12), (0, 14)),  # 0.12.0 and 0.13.0
    "aiortc": AIORTC_TESTED,
}

# A port another socket holds (EADDRINUSE), or one we may not bind: below 1024 without
# privilege (EACCES), or inside a range Windows reserves, e.g. for Hyper-V (WSAEACCES).
_PORT_TAKEN = {errno.EADDRINUSE, errno.EACCES, getattr(errno, "WSAEACCES", errno.EACCES)}

GetComponentCandidates = Callable[..., Awaitable[list[Candidate]]]


@dataclass(frozen=True)
class IcePolicy:
    """Where ICE may bind. The default (no addresses, no ports) is aioice's own behaviour."""

    addresses: tuple[str, ...] = ()  # IPs or interface names; empty = all (aioice default)
    ports: tuple[int, int] | None = None  # inclusive UDP port range; None = OS-chosen

    @property
    def active(self) -> bool:
        return bool(self.addresses) or self.ports is not None


# --- configuration: checked at startup, resolved again at every gathering ---


def resolve_addresses(policy: IcePolicy) -> list[str]:
    """The IP addresses ``policy.addresses`` names, in order, without duplicates.

    An interface name (``wg0``; on Windows also the friendly name, ``WireGuard Tunnel``)
    stands for its IPv4 addresses and its IPv6 addresses that are not link-local (as aioice,
    which cannot bind a link-local address without its scope). An empty list means "no
    restriction": aioice picks the addresses. Raises IcePolicyError naming the bad entry.
    """
    adapters = list(ifaddr.get_adapters())
    local = {_normalise(ip) for adapter in adapters for ip in adapter.ips}
    resolved: list[str] = []
    for entry in policy.addresses:
        try:
            address = ipaddress.ip_address(entry)
        except ValueError:
            found = _interface_addresses(adapters, entry)
        else:
            found = [_check_address(address, entry, local)]
        resolved += [a for a in found if a not in resolved]
    return resolved


def _interface_addresses(adapters: Sequence[ifaddr.Adapter], name: str) -> list[str]:
    matches = [a for a in adapters if name in (a.name, a.nice_name)]
    if not matches:
        known = ", ".join(sorted({a.nice_name for a in adapters}))
        raise IcePolicyError(
            ADDRESS_FLAG,
            f"{name!r} is neither an IP address nor a network interface of this machine "
            f"(interfaces: {known})",
        )
    found = [
        _normalise(ip)
        for adapter in matches
        for ip in adapter.ips
        if isinstance(ip.ip, str) or ip.ip[2] == 0  # IPv4, or IPv6 with no scope
    ]
    if not found:
        raise IcePolicyError(ADDRESS_FLAG, f"interface {name!r} has no usable IP address")
    return found


def _check_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str, local: set[str]
) -> str:
    if address.is_unspecified:
        raise IcePolicyError(
            ADDRESS_FLAG, f"{entry} means every address: leave {ADDRESS_FLAG} out for that"
        )
    if address.version == 6 and address.is_link_local:
        raise IcePolicyError(ADDRESS_FLAG, f"{entry} is link-local, which ICE cannot use")
    if str(address) not in local:
        raise IcePolicyError(ADDRESS_FLAG, f"{entry} is not an address of this machine")
    return str(address)


def _normalise(ip: ifaddr.IP) -> str:
    # ifaddr gives IPv4 as a str and IPv6 as (address, flowinfo, scope_id).
    return str(ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0]))


def check_ports(ports: tuple[int, int] | None) -> None:
    if ports is not None and not 1 <= ports[0] <= ports[1] <= 65535:
        raise IcePolicyError(PORTS_FLAG, f"expected 1 <= LO <= HI <= 65535, got {ports}")


def check_versions(installed: dict[str, str] | None = None, flag: str = ADDRESS_FLAG) -> None:
    """Refuse aioice/aiortc releases this adapter was not tested against (see ``TESTED``).

    ``installed`` maps package → version, for tests; by default it is read from metadata.
    """
    found = untested_release(TESTED, installed)
    if found is not None:
        raise IcePolicyError(
            flag,
            f"{found.package} {found.version} is installed, but restricting ICE addresses or "
            f"ports relies on {found.package} internals tested only with {found.tested}: "
            f"install a tested release or leave {ADDRESS_FLAG} and {PORTS_FLAG} out",
        )
    # A fork or vendored copy may carry a tested version number with other internals.
    parameters = inspect.signature(Connection.get_component_candidates).parameters
    if not {"component", "addresses", "timeout"} <= parameters.keys():
        raise IcePolicyError(flag, "this aioice build's candidate gathering is not supported")


def check_policy(policy: IcePolicy) -> list[str]:
    """Startup check: a bad policy stops the gateway with a clear message (IcePolicyError).

    Returns the resolved addresses, for logging. An inactive policy checks nothing: it does
    not touch aioice at all.
    """
    if not policy.active:
        return []
    check_versions(flag=ADDRESS_FLAG if policy.addresses else PORTS_FLAG)
    check_ports(policy.ports)
    return resolve_addresses(policy)


# --- peer connections ---


def create_peer_connection(
    configuration: RTCConfiguration, policy: IcePolicy = IcePolicy()
) -> RTCPeerConnection:
    """A peer connection whose ICE agent follows ``policy`` (a plain one if it is inactive)."""
    if not policy.active:
        return RTCPeerConnection(configuration=configuration)
    return PolicyPeerConnection(configuration, policy)


class PolicyPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection whose host candidates follow an :class:`IcePolicy`."""

    def __init__(self, configuration: RTCConfiguration, policy: IcePolicy) -> None:
        super().__init__(configuration=configuration)
        self.ice_policy = policy

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None:
        # aiortc gathers candidates here and nowhere else (1.16), for every ICE transport
        # that still gathers: apply the policy to those not yet started, then gather.
        for connection in _ice_connections(self, state="new"):
            apply_policy(connection, self.ice_policy)
        await super().setLocalDescription(sessionDescription)
        # Should a future aiortc create and gather a transport inside this call, its
        # candidates would ignore the policy: fail loudly rather than leak silently.
        if any(not _applied(c) for c in _ice_connections(self, state="completed")):
            raise OfferError("the ICE address policy could not be applied (unsupported aiortc)")


def _ice_connections(pc: RTCPeerConnection, state: str) -> list[Connection]:
    # Each live ICE transport belongs to a transceiver or to SCTP (bundled ones share the
    # first one's), which is also how aiortc's close() finds the transports it stops.
    dtls = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    connections: list[Connection] = []
    for transport in dtls:
        gatherer = transport.transport.iceGatherer
        connection = gatherer._connection
        if gatherer.state == state and connection not in connections:
            connections.append(connection)
    return connections


def apply_policy(connection: Connection, policy: IcePolicy) -> None:
    """Make this one aioice Connection gather its host candidates under ``policy``.

    Call it before ``gather_candidates()``; calling it twice changes nothing.
    """
    if _applied(connection):
        return
    original: GetComponentCandidates = connection.get_component_candidates

    async def get_component_candidates(
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice passes it by this name
    ) -> list[Candidate]:
        return await _gather_component(connection, original, policy, component, addresses, timeout)

    # An instance attribute shadows the method for this Connection only.
    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


def _applied(connection: Connection) -> bool:
    return "get_component_candidates" in vars(connection)


# --- gathering ---


async def _gather_component(
    connection: Connection,
    original: GetComponentCandidates,
    policy: IcePolicy,
    component: int,
    addresses: list[str],
    timeout: int,  # noqa: ASYNC109 - forwarded to aioice, which takes it by this name
) -> list[Candidate]:
    """``Connection.get_component_candidates`` with the policy's addresses and ports."""
    if connection._transport_policy is TransportPolicy.RELAY:
        # No host candidates at all (RFC 9429 section 3.5.3): aioice's own path binds none.
        return await original(component=component, addresses=addresses, timeout=timeout)
    if policy.addresses:
        try:
            addresses = resolve_addresses(policy)  # again: an interface's address may change
        except IcePolicyError as exc:
            raise OfferError(f"cannot gather ICE candidates: {exc}") from exc

    loop = asyncio.get_running_loop()
    protocols: list[StunProtocol] = []
    failures: list[str] = []
    try:
        for address in addresses:
            try:
                sock = _bind_udp(address, policy.ports)
            except OSError as exc:  # the address went away, for instance: skip it, as aioice
                logger.warning("ICE: could not bind a UDP socket on %s: %s", address, exc)
                failures.append(f"{address} ({exc.strerror or exc})")
                continue
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    lambda: StunProtocol(connection), sock=sock
                )
            except BaseException:  # not in protocols yet: the handler below cannot close it
                sock.close()
                raise
            # Set before the next await: an early connectivity check reads it.
            protocol.local_candidate = _host_candidate(component, sock.getsockname())
            protocols.append(protocol)
    except BaseException:  # a port range exhausted, or cancelled: leave no socket open
        for protocol in protocols:
            protocol.transport.close()
        raise
    if connection._closing:  # closed while we were binding: close() has already run
        for protocol in protocols:
            protocol.transport.close()
        return []
    if failures and not protocols:
        raise OfferError(f"could not bind a UDP socket for ICE on {', '.join(failures)}")
    connection._protocols += protocols

    # Server-reflexive candidates as aioice gathers them, from our sockets; the original
    # method, given no addresses, then only does what is left (TURN).
    reflexive, others = await asyncio.gather(
        _server_reflexive(connection, protocols, timeout),
        original(component=component, addresses=[], timeout=timeout),
    )
    return [p.local_candidate for p in protocols] + reflexive + others


def _bind_udp(address: str, ports: tuple[int, int] | None) -> socket.socket:
    """A UDP socket bound to ``address`` on a free port of ``ports`` (any port if None).

    Ports are tried from a random starting point, wrapping around, so that concurrent
    sessions rarely collide and every port is tried once. Raises OfferError when none is
    free, OSError for anything else (the address is not on this machine any more...).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if ports is None:
        order = [0]
    else:
        lo, hi = ports
        count = hi - lo + 1
        start = random.randrange(count)
        order = [lo + (start + i) % count for i in range(count)]
    for port in order:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: no one may bind over ours
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            sock.bind((address, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        except OSError as exc:
            sock.close()
            if ports is not None and exc.errno in _PORT_TAKEN:
                continue
            raise
        return sock
    assert ports is not None  # port 0 never reports "taken"
    raise OfferError(f"no free UDP port in {ports[0]}-{ports[1]} on {address}")


def _host_candidate(component: int, sockname: tuple[str, int]) -> Candidate:
    # As aioice's get_component_candidates builds it (IPv6 socknames have four fields).
    host, port = sockname[0], sockname[1]
    return Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=port,
        type="host",
    )


async def _server_reflexive(
    connection: Connection,
    protocols: list[StunProtocol],
    timeout: int,  # noqa: ASYNC109 - aioice's STUN helper takes it by this name
) -> list[Candidate]:
    # aioice queries the STUN server from each IPv4 host socket and keeps what answers in
    # time; failures and late answers are dropped, not raised.
    if connection.stun_server is None:
        return []
    tasks = [
        asyncio.create_task(
            server_reflexive_candidate(p, connection.stun_server),
            name=f"ice-stun:{p.local_candidate.host}:{p.local_candidate.port}",
        )
        for p in protocols
        if ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout)
    finally:
        # Late queries, or all of them if the negotiation was cancelled (timed out): none
        # may outlive the gathering and write on sockets that close() then shuts.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT_S)
    return [t.result()[0] for t in done if t.exception() is None]
