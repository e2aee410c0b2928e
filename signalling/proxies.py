"""Who the client is when the gateway sits behind reverse proxies (``--trusted-proxy``).

A proxy connects on the client's behalf and appends the address it was connected from to
``X-Forwarded-For``; each proxy in a chain does the same, so the header's right-most
entries are the ones written by the proxies nearest the gateway. Only those written by a
proxy the gateway trusts can be believed: everything to their left came from a client,
which may write anything. So the client is the right-most address that is not itself a
trusted proxy, found by walking the chain from the gateway outwards while the hop at hand
is trusted. A peer that is not a trusted proxy is the client, whatever it sends.

Pure: addresses and header values in, an address out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_trusted_proxy(text: str) -> ProxyNetwork:
    """An IP address or a CIDR network (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/64``), or
    ValueError saying why not. Host bits set after the prefix are refused as a likely typo
    (``10.0.0.5/24``), rather than silently trusting the whole network."""
    value = text.strip()
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError(f"{text!r} has host bits set: did you mean the network?") from None
        raise ValueError(f"expected an IP address or CIDR network, got {text!r}") from None


def forwarded_client(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[ProxyNetwork]
) -> str | None:
    """The client's address: ``peer`` (the direct connection's address) unless it is a
    trusted proxy; then, walking ``forwarded_for`` (the ``X-Forwarded-For`` values in the
    order received, each a comma-separated list) from the right, the first address that is
    not a trusted proxy. If every address is trusted, the left-most; if the entry a trusted
    proxy wrote is not an address (``unknown``, garbage), the proxy itself: a limit then
    falls on the proxy rather than on whatever a client made up."""
    if not trusted or peer is None:
        return peer
    hop = _address(peer)
    if hop is None or not _is_trusted(hop, trusted):
        return peer
    chain = [entry for value in forwarded_for for entry in value.split(",")]
    client = peer
    for entry in reversed(chain):
        address = _address(entry.strip())
        if address is None:
            break
        client = str(address)
        if not _is_trusted(address, trusted):
            break
    return client


def _is_trusted(address: IPAddress, trusted: Sequence[ProxyNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 proxy
    return any(address in network for network in trusted)


def host_part(text: str) -> str:
    """A host with or without a port, as Host headers and proxies write it, without the
    port and IPv6 brackets: ``[2001:db8::1]:4711`` → ``2001:db8::1``, ``lan:8001`` → ``lan``;
    a bare IPv6 literal stays whole."""
    if text.startswith("["):
        return text[1:].partition("]")[0]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


def _address(text: str) -> IPAddress | None:
    """An address as proxies write them: bare, or with a port (``192.0.2.1:4711``,
    ``[2001:db8::1]:4711``); None for anything else."""
    try:
        return ipaddress.ip_address(host_part(text))
    except ValueError:
        return None
