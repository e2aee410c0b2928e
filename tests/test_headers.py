"""Security headers on every response, the page's CSP, HSTS only over TLS."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import OfferError
from gateway.http.headers import content_security_policy, security_headers_middleware
from gateway.http.middleware import error_middleware
from tests.conftest import AiohttpClient

COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


async def page(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><p>hi", content_type="text/html")


async def data(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def own_headers(request: web.Request) -> web.Response:
    return web.Response(
        text="<p>framed",
        content_type="text/html",
        headers={"X-Frame-Options": "SAMEORIGIN", "Content-Security-Policy": "default-src *"},
    )


async def bad(request: web.Request) -> web.Response:
    raise OfferError("not an SDP offer")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/")


async def ws(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    await socket.close()
    return socket


@web.middleware
async def as_if_tls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a request over HTTPS looks like to the middleware (no certificates needed)."""
    return await handler(request.clone(scheme="https"))


def make_app(*, tls: bool = False) -> web.Application:
    middlewares = [security_headers_middleware, error_middleware]
    if tls:
        middlewares.insert(0, as_if_tls)
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/", page)
    app.router.add_get("/data", data)
    app.router.add_get("/own", own_headers)
    app.router.add_get("/bad", bad)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/ws", ws)
    return app


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


async def test_page_gets_a_strict_policy(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/")
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", f"ws://{client.host}:{client.port}"]
    assert policy["media-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    for name, value in COMMON.items():
        assert response.headers[name] == value


@pytest.mark.parametrize("path", ["/data", "/bad", "/missing"])
async def test_every_response_gets_the_common_headers(
    aiohttp_client: AiohttpClient, path: str
) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get(path)
    for name, value in COMMON.items():
        assert response.headers[name] == value
    assert "Content-Security-Policy" not in response.headers  # JSON is not a document
    assert "Strict-Transport-Security" not in response.headers


async def test_raised_redirect_gets_the_headers(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_handler_headers_are_kept(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/own")
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["Content-Security-Policy"] == "default-src *"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_websocket_passes_through(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws")
    await socket.close()


async def test_tls_adds_hsts_and_wss(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(tls=True))
    response = await client.get("/", headers={"Host": "gw.lan:8001"})
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["connect-src"] == ["'self'", "wss://gw.lan:8001"]
    json_response = await client.get("/data", headers={"Host": "gw.lan:8001"})
    assert json_response.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize("host", ["localhost:8001", "LOCALHOST", "app.localhost:8001", ""])
async def test_no_hsts_for_localhost(aiohttp_client: AiohttpClient, host: str) -> None:
    # HSTS on localhost would force HTTPS onto every other local dev server the user runs.
    client = await aiohttp_client(make_app(tls=True))
    response = await client.get("/data", headers={"Host": host})
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.parametrize(
    "host",
    ["evil; script-src *", "a b", "x'y", "host/path", "", "[::1;]"],
)
def test_host_header_cannot_inject_directives(host: str) -> None:
    policy = content_security_policy(host, secure=True)
    assert directives(policy)["connect-src"] == ["'self'"]
    assert policy.count(";") == 9


@pytest.mark.parametrize("host", ["gw.lan", "gw.lan:8001", "10.0.0.2:8001", "[fd00::1]:8001"])
def test_well_formed_hosts_are_named(host: str) -> None:
    assert directives(content_security_policy(host, secure=True))["connect-src"] == [
        "'self'",
        f"wss://{host}",
    ]


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("[::1]:8001", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("127.0.0.1:8001", "127.0.0.1"),
        ("Example.LAN.:8001", "example.lan"),
        ("localhost", "localhost"),
    ],
)
def test_host_name(host: str, name: str) -> None:
    from gateway.http.headers import host_name

    assert host_name(host) == name


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("[::1]:8001", True),
        ("127.0.0.1:8001", True),
        ("app.localhost:3000", True),
        ("evil.example:8001", False),
    ],
)
def test_local_names_without_tls(host: str, local: bool) -> None:
    from gateway.http.headers import _is_local_name

    assert _is_local_name(host) is local
