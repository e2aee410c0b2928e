"""A media worker's side of the front (``gateway.http.front``): what it believes from the
front and what it tells it.

A worker serves the whole gateway app on a Unix socket that only the gateway's user can
open (``--worker-socket``), so whatever connects is the front: it believes
``X-Forwarded-For`` (see ``gateway.http.forwarded``) and :data:`PRINCIPAL_HEADER`, who
authenticated at the front, which decides whose sessions a request may reach.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.auth import PRINCIPAL, Principal
from gateway.http.middleware import Handler
from gateway.http.state import CLIENT_SESSIONS, SESSIONS

PRINCIPAL_HEADER = "X-Gateway-Principal"
LOAD_PATH = "/internal/load"  # a worker's sessions, in total and for one client


def principal_header(principal: Principal | None) -> str | None:
    """How the front names who authenticated: ``method:subject``."""
    return None if principal is None else f"{principal.method}:{principal.subject}"


def parse_principal_header(value: str | None) -> Principal | None:
    """The principal the front named; None for none or a malformed value."""
    if not value:
        return None
    method, sep, subject = value.partition(":")
    if not sep or not subject:
        return None
    if method == "api-key":
        return Principal(subject=subject, method="api-key")
    if method == "jwt":
        return Principal(subject=subject, method="jwt")
    return None


@web.middleware
async def front_principal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    principal = parse_principal_header(request.headers.get(PRINCIPAL_HEADER))
    if principal is not None:
        request[PRINCIPAL] = principal
    return await handler(request)


async def load(request: web.Request) -> web.Response:
    """How full this worker is, for the front's admission: its sessions, and those of the
    client the front is admitting (``?client=``, a ``signalling.limits.client_key``)."""
    client = request.query.get("client", "")
    return web.json_response(
        {
            "sessions": len(request.app[SESSIONS]),
            "client_sessions": request.app[CLIENT_SESSIONS].held(client),
        }
    )


def setup_worker(app: web.Application) -> None:
    app.middlewares.append(front_principal_middleware)
    app.router.add_get(LOAD_PATH, load)
