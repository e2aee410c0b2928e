"""CORS for listed origins only, through the real error middleware; the ``/ws`` origin check."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp.typedefs import Handler
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import OfferError
from gateway.http.cors import (
    allowed_origins,
    cors_middleware,
    normalize_origin,
    websocket_origin_allowed,
)
from gateway.http.headers import security_headers_middleware
from gateway.http.middleware import error_middleware, json_error
from tests.conftest import AiohttpClient

NUXT = "https://nuxt.example:3000"
EVIL = "https://evil.example"
TOKEN = "Bearer let-me-in"
ALLOWED = web.AppKey("allowed", tuple[str, ...])


@web.middleware
async def fake_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stands in for the real auth middleware: every request needs the header."""
    if request.headers.get("Authorization") != TOKEN:
        return json_error(401, "unauthorized", "missing or wrong Authorization")
    return await handler(request)


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def offer(request: web.Request) -> web.Response:
    return web.json_response({"session_id": "abc"}, headers={"Location": "/sessions/abc"})


async def bad_offer(request: web.Request) -> web.Response:
    raise OfferError("not an SDP offer")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/")


async def varies(request: web.Request) -> web.Response:
    return web.json_response({}, headers={"Vary": "Accept-Encoding"})


async def ws(request: web.Request) -> web.WebSocketResponse:
    allowed: tuple[str, ...] = request.app[ALLOWED]
    if not websocket_origin_allowed(request, allowed):
        raise web.HTTPForbidden(reason="origin not allowed")
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    await socket.send_str("hello")
    await socket.close()
    return socket


def make_app(allowed: tuple[str, ...] = (NUXT,), *, auth: bool = False) -> web.Application:
    middlewares = [cors_middleware(allowed), error_middleware]
    if auth:
        middlewares.append(fake_auth)
    app = web.Application(middlewares=middlewares)
    app[ALLOWED] = allowed
    app.router.add_get("/thing", ok)
    app.router.add_post("/offer", offer)
    app.router.add_get("/bad", bad_offer)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/varies", varies)
    app.router.add_get("/ws", ws)
    return app


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


def no_cors_headers(headers: Mapping[str, str]) -> bool:
    return not any(name.lower().startswith("access-control-") for name in headers)


async def test_preflight_from_listed_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.options("/offer", headers=preflight(NUXT))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == NUXT
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE, OPTIONS"
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower().split(", ")
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Access-Control-Expose-Headers"] == (
        "Location, Retry-After, ETag, Link, Accept-Post"
    )
    assert response.headers["Vary"] == "Origin"
    # Authorization is a header the page sets, not a cookie: no credentials mode.
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_preflight_is_answered_for_any_route(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    for path in ("/sessions/abc", "/no/such/route", "/ws"):
        response = await client.options(path, headers=preflight(NUXT, "DELETE"))
        assert response.status == 204, path


async def test_preflight_never_reaches_auth(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(auth=True))
    response = await client.options("/offer", headers=preflight(NUXT))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == NUXT


async def test_preflight_from_other_origin_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(auth=True))
    response = await client.options("/offer", headers=preflight(EVIL))
    assert response.status == 403
    body = await response.json()
    assert body["error"]["code"] == "forbidden"
    assert EVIL in body["error"]["message"]
    assert no_cors_headers(response.headers)


async def test_nothing_allowed_refuses_every_preflight(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(()))
    response = await client.options("/offer", headers=preflight(NUXT))
    assert response.status == 403
    assert no_cors_headers(response.headers)


async def test_private_network_access_preflight(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    headers = preflight(NUXT) | {"Access-Control-Request-Private-Network": "true"}
    response = await client.options("/offer", headers=headers)
    assert response.headers["Access-Control-Allow-Private-Network"] == "true"
    plain = await client.options("/offer", headers=preflight(NUXT))
    assert "Access-Control-Allow-Private-Network" not in plain.headers


async def test_plain_options_goes_to_the_router(aiohttp_client: AiohttpClient) -> None:
    # Without Access-Control-Request-Method it is not a preflight (WHIP sends such requests).
    client = await aiohttp_client(make_app())
    response = await client.options("/offer", headers={"Origin": NUXT})
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert response.headers["Access-Control-Allow-Origin"] == NUXT


async def test_actual_response_for_listed_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.post("/offer", json={}, headers={"Origin": NUXT})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == NUXT
    assert response.headers["Access-Control-Expose-Headers"] == (
        "Location, Retry-After, ETag, Link, Accept-Post"
    )
    assert response.headers["Location"] == "/sessions/abc"
    assert response.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("origin", [EVIL, "null", "https://nuxt.example:3001", "not an origin"])
async def test_other_origins_get_no_cors_headers(
    aiohttp_client: AiohttpClient, origin: str
) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/thing", headers={"Origin": origin})
    assert response.status == 200
    assert no_cors_headers(response.headers)
    assert response.headers["Vary"] == "Origin"


async def test_same_origin_request_varies_on_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/thing")
    assert no_cors_headers(response.headers)
    assert response.headers["Vary"] == "Origin"


async def test_vary_is_merged(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/varies", headers={"Origin": NUXT})
    assert response.headers["Vary"] == "Accept-Encoding, Origin"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/bad", 400, "bad_offer"), ("/missing", 404, "not_found")],
)
async def test_error_responses_are_readable_by_listed_origin(
    aiohttp_client: AiohttpClient, path: str, status: int, code: str
) -> None:
    # Without ACAO on errors the page sees a bare network error, not the JSON message.
    client = await aiohttp_client(make_app())
    response = await client.get(path, headers={"Origin": NUXT})
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert response.headers["Access-Control-Allow-Origin"] == NUXT
    assert response.headers["Vary"] == "Origin"


async def test_auth_failure_is_readable_by_listed_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(auth=True))
    response = await client.get("/thing", headers={"Origin": NUXT})
    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == NUXT
    authed = await client.get("/thing", headers={"Origin": NUXT, "Authorization": TOKEN})
    assert authed.status == 200


async def test_raised_redirect_gets_headers(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    response = await client.get("/redirect", headers={"Origin": NUXT}, allow_redirects=False)
    assert response.status == 302
    assert response.headers["Access-Control-Allow-Origin"] == NUXT
    assert response.headers["Vary"] == "Origin"


async def test_configured_origin_is_normalised(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(("HTTPS://App.Example:443",)))
    response = await client.get("/thing", headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_recommended_order_with_security_headers(aiohttp_client: AiohttpClient) -> None:
    app = web.Application(
        middlewares=[
            security_headers_middleware,
            cors_middleware([NUXT]),
            error_middleware,
            fake_auth,
        ]
    )
    app.router.add_post("/offer", offer)
    client = await aiohttp_client(app)
    for response in (
        await client.options("/offer", headers=preflight(NUXT)),
        await client.options("/offer", headers=preflight(EVIL)),
        await client.post("/offer", headers={"Origin": NUXT}),
    ):
        assert response.status in (204, 403, 401)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Vary"] == "Origin"


# --- /ws origin check ---


async def ws_status(client: TestClient, origin: str | None) -> int:  # type: ignore[type-arg]
    try:
        socket = await client.ws_connect("/ws", origin=origin)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    assert (await socket.receive_str()) == "hello"
    await socket.close()
    return 101


async def test_ws_origin_check(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    own = f"http://{client.host}:{client.port}"
    assert await ws_status(client, None) == 101  # wscat and other non-browser clients
    assert await ws_status(client, own) == 101
    assert await ws_status(client, NUXT) == 101
    assert await ws_status(client, EVIL) == 403
    assert await ws_status(client, "null") == 403
    # Same host, wrong scheme: a plain-HTTP page may not use the HTTPS gateway's socket.
    assert await ws_status(client, own.replace("http:", "https:")) == 403


def ws_request(host: str, origin: str | None, *, secure: bool) -> web.Request:
    headers = {"Host": host} | ({"Origin": origin} if origin is not None else {})
    request = make_mocked_request("GET", "/ws", headers=headers)
    return request.clone(scheme="https") if secure else request


@pytest.mark.parametrize(
    ("host", "origin", "secure", "expected"),
    [
        ("gw.lan:8001", "https://gw.lan:8001", True, True),
        ("gw.lan:8001", "https://GW.lan:8001", True, True),
        ("gw.lan", "https://gw.lan:443", True, True),
        ("gw.lan:443", "https://gw.lan", True, True),
        ("[fd00::1]:8001", "https://[fd00::1]:8001", True, True),
        ("gw.lan:8001", "http://gw.lan:8001", True, False),
        ("gw.lan:8001", "https://gw.lan:8002", True, False),
        ("gw.lan:8001", "https://other.lan:8001", True, False),
        ("gw.lan:8001", NUXT, True, True),
        ("gw.lan:8001", None, True, True),
        ("gw.lan:8001", "", True, False),
        ("127.0.0.1:8001", "http://127.0.0.1:8001", False, True),
    ],
)
def test_websocket_origin_allowed(
    host: str, origin: str | None, secure: bool, expected: bool
) -> None:
    request = ws_request(host, origin, secure=secure)
    assert websocket_origin_allowed(request, [NUXT]) is expected


# --- origin parsing ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://example.com", "https://example.com"),
        ("HTTPS://Example.COM:443", "https://example.com"),
        ("http://example.com:80", "http://example.com"),
        ("http://example.com:443", "http://example.com:443"),
        ("https://example.com:3000", "https://example.com:3000"),
        ("https://[FD00::1]:8001", "https://[fd00::1]:8001"),
        ("https://[::1]", "https://[::1]"),
        ("null", None),
        ("", None),
        ("file:///etc", None),
        ("ws://example.com", None),
        ("https://", None),
        ("https://example.com/", None),
        ("https://user@example.com", None),
        ("https://example.com:", None),
        ("https://example.com:http", None),
        ("https://[::1", None),
        ("https://[::1]x", None),
    ],
)
def test_normalize_origin(text: str, expected: str | None) -> None:
    assert normalize_origin(text) == expected


@given(st.text(max_size=40))
def test_normalize_origin_is_idempotent(text: str) -> None:
    normal = normalize_origin(text)
    if normal is not None:
        assert normalize_origin(normal) == normal


def test_a_bad_configured_origin_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^'nuxt\.example' is not an origin"):
        allowed_origins(["https://ok.example", "nuxt.example"])
