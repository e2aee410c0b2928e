"""CORS for a front end on another origin (``--cors-origin``), and the ``/ws`` origin check.

Only exact origins are allowed; there is no wildcard and no credentials mode. The gateway
authenticates with an ``Authorization`` header that the page sets itself, never with a
cookie, so ``Access-Control-Allow-Credentials`` is deliberately absent: a browser then never
attaches ambient credentials (cookies, TLS client certificates) to a cross-origin request.
``Authorization`` must be named in ``Access-Control-Allow-Headers``: the ``*`` wildcard
does not cover it.

CORS only stops a page *reading* a response. What stops another site from *making* a
state-changing request is that every such route needs a preflight (``POST /offer`` takes
``application/json`` only and ``POST /whip`` ``application/sdp`` only, neither of them a
simple content type; ``DELETE`` and ``PATCH`` are never simple methods), and a preflight from an
origin that is not listed is refused here. WebSockets are not covered by CORS at all, hence
:func:`websocket_origin_allowed`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from gateway.http.middleware import json_error
from gateway.ops.config import parse_origin
from gateway.ops.logs import loggable

logger = logging.getLogger(__name__)

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
# The browser may reuse a preflight this long (s); short, so a removed origin stops soon.
MAX_AGE_S = 600
# Location: the session URL to DELETE; Retry-After: how long to back off on a 429 or 503;
# ETag, Link and Accept-Post: what a WHIP client reads (RFC 9725). PATCH is not among the
# allowed methods: WHIP clients take that to mean "no trickle ICE", which is the case.
EXPOSE_HEADERS = "Location, Retry-After, ETag, Link, Accept-Post"
# The WHIP endpoint says what it takes on every OPTIONS, preflights included (RFC 9725).
ACCEPT_POST = {"/whip": "application/sdp"}


def normalize_origin(origin: str) -> str | None:
    """An origin as browsers serialise it (lower case, no default port), or None if it is
    not an ``http(s)://host[:port]`` origin. ``null`` (sandboxed frames, ``file:``) is None.
    The same parser as ``--cors-origin``'s, so both sides of a comparison agree."""
    try:
        return parse_origin(origin)
    except ValueError:
        return None


def allowed_origins(allowed: Iterable[str]) -> frozenset[str]:
    """The normalised set; a ValueError says which entry is not an origin, and why."""
    return frozenset(parse_origin(origin) for origin in allowed)


def _add_vary_origin(response: web.StreamResponse) -> None:
    # Caches must not serve one origin's response (with its ACAO) to another origin.
    vary = response.headers.get(hdrs.VARY, "")
    tokens = {token.strip().lower() for token in vary.split(",")}
    if "origin" not in tokens and "*" not in tokens:
        response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"


def apply_cors_headers(
    request: web.Request, response: web.StreamResponse, allowed: frozenset[str]
) -> None:
    """Adds the headers of an actual (non-preflight) response. Exposed for handlers that
    ``prepare()`` their own response (Server-Sent Events), which a middleware sees too late."""
    _add_vary_origin(response)
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or normalize_origin(origin) not in allowed:
        return
    response.headers.setdefault(hdrs.ACCESS_CONTROL_ALLOW_ORIGIN, origin)
    response.headers.setdefault(hdrs.ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS)


def _preflight(request: web.Request, allowed: frozenset[str]) -> web.Response:
    origin = request.headers[hdrs.ORIGIN]
    if normalize_origin(origin) not in allowed:
        # Logged: the operator's first question when a front end on another origin fails.
        logger.info("refused preflight from origin %s: not a --cors-origin", loggable(origin))
        response = json_error(403, "forbidden", f"origin '{loggable(origin)}' is not allowed")
        _add_vary_origin(response)
        return response
    headers: dict[str, str] = {
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
        hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOW_HEADERS,
        hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE_S),
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: EXPOSE_HEADERS,
        hdrs.VARY: "Origin",
    }
    if request.path in ACCEPT_POST:
        headers["Accept-Post"] = ACCEPT_POST[request.path]
    # Chrome's Private Network Access: a page on a public origin asking for a LAN/loopback
    # gateway must be let through explicitly; the operator listed this origin, so it is.
    if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"
    return web.Response(status=204, headers=headers)


def is_preflight(request: web.Request) -> bool:
    # An OPTIONS without these is an ordinary request (WHIP clients send those) for the router.
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def cors_middleware(allowed: Iterable[str]) -> Middleware:
    """Answers preflights for every route and marks responses readable by ``allowed``.

    Place it outside ``error_middleware`` (so error responses carry the headers, or the
    browser hides their body behind a network error) and outside authentication (a
    preflight never carries ``Authorization``, so it must be answered before auth runs).
    """
    origins = allowed_origins(allowed)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_preflight(request):
            return _preflight(request, origins)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # what error_middleware lets through: redirects
            apply_cors_headers(request, exc, origins)
            raise
        if not response.prepared:  # a WebSocket or stream has already sent its headers
            apply_cors_headers(request, response, origins)
        return response

    return cors


def websocket_origin_allowed(request: web.Request, allowed: Iterable[str]) -> bool:
    """Whether a ``/ws`` upgrade may proceed (cross-site WebSocket hijacking defence).

    Browsers always send ``Origin`` on a WebSocket handshake and a page cannot forge it, so
    its absence means a non-browser client (``wscat``), which CORS-style checks do not
    concern. The gateway's own origin is taken from the ``Host`` header the browser sent.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    normal = normalize_origin(origin)
    if normal is None:
        return False
    scheme = "https" if request.secure else "http"
    own = normalize_origin(f"{scheme}://{request.host}")
    return normal == own or normal in allowed_origins(allowed)
