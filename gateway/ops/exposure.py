"""Is Ollama reachable from the network? It has no authentication, so it should answer on
loopback only. Used by ``doctor`` and at start-up, each probe bounded by a short timeout."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import urllib.parse
from collections.abc import Sequence

import ifaddr

OLLAMA_DEFAULT_PORT = 11434
PROBE_TIMEOUT_S = 0.5


def local_addresses() -> list[str]:
    """This machine's addresses other than loopback and IPv6 link-local (which need a
    scope to be reached)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.is_loopback or (address.version == 6 and address.is_link_local):
                continue
            found.append(text)
    return list(dict.fromkeys(found))


def ollama_port(url: str) -> int:
    """The port the ``ollama`` client connects to for ``url`` (it defaults a bare host to
    11434, and a scheme without a port to that scheme's port)."""
    has_scheme = "://" in url
    try:
        parts = urllib.parse.urlsplit(url if has_scheme else f"http://{url}")
        port = parts.port
    except ValueError:
        return OLLAMA_DEFAULT_PORT
    if port is not None:
        return port
    if not has_scheme:
        return OLLAMA_DEFAULT_PORT
    return 443 if parts.scheme == "https" else 80


async def answers(address: str, port: int, timeout_s: float) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return True


async def exposed_on(
    addresses: Sequence[str], port: int, timeout_s: float = PROBE_TIMEOUT_S
) -> list[str]:
    """Which of ``addresses`` accept a TCP connection on ``port``."""
    answered = await asyncio.gather(*(answers(a, port, timeout_s) for a in addresses))
    return [a for a, yes in zip(addresses, answered, strict=True) if yes]
