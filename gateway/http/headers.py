"""Security headers: a Content-Security-Policy for the built-in page, and the usual rest.

The policy allows nothing inline: the page's script and style are files served by the
gateway (``/app.js``, ``/app.css``), so an injected ``<script>`` or ``style=`` cannot run. A
header a handler set itself is left alone.
"""

from __future__ import annotations

import ipaddress
import logging
import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.http.forwarded import client_address
from gateway.http.middleware import json_error
from gateway.ops.logs import loggable
from signalling.proxies import host_part

logger = logging.getLogger(__name__)

# On every response. The microphone is the page's job; nothing may frame the page
# (clickjacking a "Start" button would switch the microphone on).
COMMON_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}
# No includeSubDomains: other hosts under the same LAN domain are none of our business.
HSTS = "max-age=31536000"

# A Host header we are willing to repeat inside the policy: a name or address and a port.
# Anything else (``;``, spaces, quotes) could add directives, so it is left out.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def content_security_policy(host: str, secure: bool) -> str:
    """The page's policy. ``'self'`` covers ``wss:`` of the same host only in CSP Level 3
    browsers (older Safari refused the page's own WebSocket), so it is also named."""
    connect = "'self'"
    if _HOST_RE.fullmatch(host):
        connect += f" {'wss' if secure else 'ws'}://{host}"
    return "; ".join(
        (
            "default-src 'self'",
            f"connect-src {connect}",
            # getUserMedia and srcObject playback are not URL loads; CSP does not gate them.
            "media-src 'self'",
            "img-src 'self' data:",
            "style-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        )
    )


def host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case:
    ``[::1]:8001`` → ``::1``, ``Example.LAN:8001`` → ``example.lan``."""
    return host_part(host).lower().rstrip(".")


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def _hsts_applies(host: str) -> bool:
    # Browsers remember HSTS per host name for every port: on ``localhost`` it would force
    # HTTPS onto the user's other local servers (a Nuxt dev server on :3000). IP literals
    # are ignored by browsers anyway (RFC 6797 section 8.1).
    name = host_name(host)
    return bool(name) and not _is_localhost(name)


def apply_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Adds what is missing. Exposed for handlers that ``prepare()`` their own response."""
    for name, value in COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.secure and _hsts_applies(request.host):
        response.headers.setdefault(hdrs.STRICT_TRANSPORT_SECURITY, HSTS)
    if response.content_type == "text/html":
        response.headers.setdefault(
            hdrs.CONTENT_SECURITY_POLICY,
            content_security_policy(request.host, request.secure),
        )


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so that preflight answers and converted errors get the headers too."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects that error_middleware lets through
        apply_security_headers(request, exc)
        raise
    if not response.prepared:  # a WebSocket or stream has already sent its headers
        apply_security_headers(request, response)
    return response


def _is_local_name(host: str) -> bool:
    name = host_name(host)
    if _is_localhost(name):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def loopback_host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without TLS (loopback only), refuse Host names other than IP literals and localhost:
    a page whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) would otherwise be
    same-origin with the gateway. With TLS the certificate already refuses such names."""
    if not _is_local_name(request.host):
        logger.info(
            "refused Host %s from %s: TLS is off, so only an IP address or localhost",
            loggable(request.host),
            client_address(request),
        )
        return json_error(
            403, "forbidden", "Host must be an IP address or localhost when TLS is off"
        )
    return await handler(request)
