"""The front process of a gateway with media workers (``--workers N``, N > 1).

The front keeps everything HTTP: TLS, authentication, CORS, rate limits and admission, the
built-in page, ``/ready`` and ``/metrics`` for all. Each worker is a whole gateway app
(``gateway.http.app``) serving on a Unix socket that only the gateway's user can open; it
owns its peer connections, VAD and conversations, and WebRTC media flows between the
browser and the worker directly (the answer carries the worker's own candidates).

    client ──HTTPS──▶ front ──Unix socket──▶ worker wN (aiortc, VAD, conversation)
                       │ auth, limits,          ▲
                       │ admission              └── UDP media straight from the browser
                       └─ /offer, /whip, /ws: to the worker with the most room
                          /sessions/<id>…: to the worker the id names

A worker believes two headers, on its socket only: ``X-Forwarded-For`` (the client's
address, for its limits and logs) and :data:`PRINCIPAL_HEADER` (who authenticated here).
A worker that dies is restarted (``gateway.ops.children``); streams the front relays from
it (``/ws``, Server-Sent Events) end with ``session.ended`` ``worker-lost``, and WebRTC
clients see their connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.conversation.resume import claimed_conversation
from gateway.errors import SessionLimitError, SessionNotFound
from gateway.http import routes, whip
from gateway.http.admission import Measure, capacity_check, refuse_when_full, sampling
from gateway.http.auth import WS_SUBPROTOCOL, presents_capability, principal_of, setup_auth
from gateway.http.cors import cors_middleware
from gateway.http.drain import Drain
from gateway.http.events import HEARTBEAT_S as STREAM_HEARTBEAT_S
from gateway.http.events import sse_event, write_bounded
from gateway.http.forwarded import client_address
from gateway.http.headers import loopback_host_middleware, security_headers_middleware
from gateway.http.middleware import (
    SESSION_RETRY_AFTER_S,
    error_middleware,
    json_error,
    rate_limited,
    retry_after,
)
from gateway.http.sessions import GuessBudget
from gateway.http.state import CONFIG, DRAIN, OFFER_LIMITER
from gateway.http.worker import LOAD_PATH, PRINCIPAL_HEADER, principal_header
from gateway.http.ws import HEARTBEAT_S, MAX_MESSAGE_BYTES
from gateway.ops.capacity import Usage
from gateway.ops.children import Child
from gateway.ops.config import Config
from signalling import protocol
from signalling.limits import RateLimiter, client_key
from signalling.offer import MAX_BODY_BYTES
from signalling.registry import worker_of

logger = logging.getLogger(__name__)

INTERNAL_TIMEOUT_S = 2.0  # a worker on the same machine answers in milliseconds
# A worker's whole answer: an offer's ICE gathering (aiortc waits for every candidate),
# a DELETE's goodbye, /config. Event streams (SSE) have no end and no such limit.
ANSWER_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 30.0  # a client's whole request body (an offer: 64 KB at most)
# Hop-by-hop headers (RFC 9110 section 7.6.1) and what aiohttp sets itself; credentials
# stay at the front (the worker is told who they named instead).
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION,
        hdrs.TE, hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE, hdrs.HOST,
        hdrs.CONTENT_LENGTH, hdrs.AUTHORIZATION, hdrs.X_FORWARDED_FOR, PRINCIPAL_HEADER,
        hdrs.SEC_WEBSOCKET_KEY, hdrs.SEC_WEBSOCKET_VERSION, hdrs.SEC_WEBSOCKET_EXTENSIONS,
        hdrs.SEC_WEBSOCKET_PROTOCOL, hdrs.SEC_WEBSOCKET_ACCEPT,
    )
)  # fmt: skip
_NOT_RETURNED = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.TRANSFER_ENCODING, hdrs.CONTENT_LENGTH,
        hdrs.SERVER, hdrs.DATE,
    )
)  # fmt: skip


class Workers:
    """The front's view of its workers: where a session lives, which one has room."""

    def __init__(self, children: Iterable[Child]) -> None:
        self.children = {child.name: child for child in children}
        # Choosing reads every worker's load: one at a time, so that two offers cannot both
        # take the last place. Offers handed over and not yet answered count as their
        # worker's sessions (the worker registers a session before it answers).
        self._choosing = asyncio.Lock()
        self._placing: list[tuple[str, str]] = []  # (worker, client key)

    def ready(self) -> list[Child]:
        return [child for child in self.children.values() if child.ready]

    def holding(self, session_id: str) -> Child:
        """The worker a session id names; SessionNotFound for an id no worker made."""
        child = self.children.get(worker_of(session_id) or "")
        if child is None:
            raise SessionNotFound("no such session")
        return child

    async def load(self, client: str) -> dict[str, tuple[int, int]]:
        """(sessions, sessions of ``client``) for each worker that answers now."""

        async def one(child: Child) -> tuple[str, tuple[int, int]] | None:
            try:
                async with child.http.get(
                    LOAD_PATH,
                    params={"client": client},
                    timeout=aiohttp.ClientTimeout(total=INTERNAL_TIMEOUT_S),
                ) as response:
                    if response.status != 200:
                        return None
                    body = await response.json()
                return child.name, (int(body["sessions"]), int(body["client_sessions"]))
            except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError):
                return None  # dead or restarting: not a candidate

        answers = await asyncio.gather(*(one(child) for child in self.ready()))
        return dict(answer for answer in answers if answer is not None)

    @contextlib.asynccontextmanager
    async def placed(
        self, client: str, max_sessions: int, per_client: int, prefer: str | None = None
    ) -> AsyncIterator[Child]:
        """The worker with the most room for one more session of ``client`` (``prefer``,
        the one holding a conversation to resume, when it is up), counted as that worker's
        until the block ends; or the refusal the single-process gateway would give."""
        async with self._choosing:
            load = await self.load(client)
            for name, whose in self._placing:
                if name in load:
                    total, mine = load[name]
                    load[name] = (total + 1, mine + (whose == client))
            name = choose(load, max_sessions, per_client, prefer)
            placing = (name, client)
            self._placing.append(placing)
        try:
            yield self.children[name]
        finally:
            self._placing.remove(placing)


def choose(
    load: Mapping[str, tuple[int, int]], max_sessions: int, per_client: int, prefer: str | None
) -> str:
    """Which worker takes a session, from each ready one's (sessions, the client's)."""
    if not load:
        raise SessionLimitError("no media worker is ready; try again shortly")
    if sum(total for total, _ in load.values()) >= max_sessions:
        raise SessionLimitError(f"all {max_sessions} sessions are in use; try again shortly")
    if sum(mine for _, mine in load.values()) >= per_client:
        raise web.HTTPTooManyRequests(
            reason="too many sessions from your address; end one first",
            headers=retry_after(SESSION_RETRY_AFTER_S),
        )
    if prefer is not None and prefer in load:
        return prefer
    return min(load, key=lambda n: (load[n][0], n))


async def read_body(request: web.Request) -> bytes:
    """The request's body (aiohttp keeps it for later reads), or 408 if it does not come."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None


def forwarded_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
    headers[hdrs.X_FORWARDED_FOR] = client_address(request) or ""
    principal = principal_header(principal_of(request))
    if principal is not None:
        headers[PRINCIPAL_HEADER] = principal
    return headers


async def relay(request: web.Request, child: Child) -> web.StreamResponse:
    """``request`` as the worker answers it; an event stream is relayed as it flows and,
    if the worker dies under it, ended with ``session.ended`` ``worker-lost``."""
    body = await read_body(request)
    streaming = request.path.endswith("/events")
    try:
        upstream = await child.http.request(
            request.method,
            request.rel_url.path_qs,
            headers=forwarded_headers(request),
            data=body or None,
            timeout=aiohttp.ClientTimeout(
                total=None if streaming else ANSWER_TIMEOUT_S,
                sock_connect=INTERNAL_TIMEOUT_S,
                # A live stream sends a heartbeat at least this often.
                sock_read=2 * STREAM_HEARTBEAT_S if streaming else None,
            ),
            allow_redirects=False,
            auto_decompress=False,
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        logger.warning("%s %s: worker %s unreachable: %s", request.method, request.path,
                       child.name, exc)  # fmt: skip
        return _worker_unavailable()
    async with upstream:
        # A multidict: WHIP's answer has one Link header per ICE server.
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_RETURNED
        )
        if upstream.content_type != "text/event-stream":
            try:
                answer = await upstream.read()
            except (aiohttp.ClientError, TimeoutError):
                return _worker_unavailable()
            return web.Response(status=upstream.status, headers=headers, body=answer)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        await _relay_stream(request, response, upstream)
        return response


async def _relay_stream(
    request: web.Request, response: web.StreamResponse, upstream: aiohttp.ClientResponse
) -> None:
    """An event stream's chunks as they come, until either end goes; a worker that dies
    or falls silent (no heartbeat) costs the reader a ``session.ended`` ``worker-lost``."""
    chunks = upstream.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except (aiohttp.ClientError, OSError, TimeoutError):
            with contextlib.suppress(ConnectionError, TimeoutError):
                await write_bounded(request, response, sse_event(_worker_lost_event()).encode())
            return
        try:
            await write_bounded(request, response, chunk)
        except (ConnectionError, TimeoutError):
            return  # the reader went away, or stopped reading


async def connect_websocket(
    request: web.Request, child: Child
) -> aiohttp.ClientWebSocketResponse | web.Response:
    """The worker's side of a ``/ws`` session, or the refusal to send the client."""
    # Only the events protocol: a "bearer.<token>" one is a credential, and stays here.
    offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")
    protocols = [WS_SUBPROTOCOL] if WS_SUBPROTOCOL in (p.strip() for p in offered) else []
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            return await child.http.ws_connect(
                request.rel_url.path_qs,
                headers=forwarded_headers(request),
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                max_msg_size=0,  # the worker's own messages: no limit needed
            )
    except aiohttp.WSServerHandshakeError as exc:  # the worker refused: say what it said
        return json_error(exc.status, "refused", exc.message or "refused by the media worker")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return _worker_unavailable()


async def relay_websocket(
    request: web.Request, upstream: aiohttp.ClientWebSocketResponse
) -> web.WebSocketResponse:
    """Frames both ways as they come, until either side closes. A worker that dies (no
    closing handshake) costs the client a ``session.ended`` ``worker-lost``."""
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        # As the worker's own /ws: an oversized frame is refused here, not relayed.
        max_msg_size=MAX_MESSAGE_BYTES,
        heartbeat=HEARTBEAT_S,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close()  # the worker's session ends with it
        raise
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(_pump(upstream, client), name="ws-worker-to-client"),
        loop.create_task(_pump(client, upstream), name="ws-client-to-worker"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lost = upstream.closed and upstream.close_code in (None, 1006)
        if lost and not client.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await client.send_str(_worker_lost_event())
        await upstream.close()
        await client.close(code=upstream.close_code or aiohttp.WSCloseCode.GOING_AWAY)
    return client


WebSocket = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    """Text and binary messages from ``source`` to ``sink`` until ``source`` closes."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)


def _worker_lost_event() -> str:
    return protocol.encode(protocol.session_ended("worker-lost"))


def _worker_unavailable() -> web.Response:
    return json_error(
        503,
        "worker_unavailable",
        "the media worker is restarting; try again shortly",
        {"Retry-After": str(SESSION_RETRY_AFTER_S)},
    )


def merge_metrics(texts: Mapping[str, str], own: str) -> bytes:
    """The front's own metrics and each worker's, the workers' samples labelled with
    ``worker``: one exposition, each family once."""
    families: dict[str, Metric] = {}

    def add(text: str, labels: Mapping[str, str]) -> None:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            for sample in family.samples:
                merged.add_sample(
                    sample.name, {**sample.labels, **labels}, sample.value, sample.timestamp
                )

    add(own, {})
    for worker, text in texts.items():
        add(text, {"worker": worker})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _WorkerStates:
    """Each worker's state, from the front's supervisor: up or not, and restarts."""

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def collect(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "gateway_worker_up", "1 while the media worker is ready", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "gateway_worker_restarts", "Media worker restarts after it died", labels=["worker"]
        )
        for name, child in sorted(self._workers.children.items()):
            up.add_metric([name], 1.0 if child.ready else 0.0)
            restarts.add_metric([name], float(child.restarts))
        return [up, restarts]


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def worker_texts(workers: Workers, path: str) -> dict[str, Any]:
    """GET ``path`` from every ready worker: name → body (JSON or text), those that answer."""

    async def one(child: Child) -> tuple[str, Any] | None:
        try:
            async with child.http.get(
                path, timeout=aiohttp.ClientTimeout(total=INTERNAL_TIMEOUT_S)
            ) as response:
                if response.content_type == "application/json":
                    return child.name, (response.status, await response.json())
                return child.name, (response.status, await response.text())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    answers = await asyncio.gather(*(one(child) for child in workers.ready()))
    return dict(answer for answer in answers if answer is not None)


# --- the front's application ---

WORKERS = web.AppKey("workers", Workers)
FRONT_REGISTRY = web.AppKey("front_registry", CollectorRegistry)  # the front's own process


def build_front_app(config: Config, workers: Workers, asr: Child | None = None) -> web.Application:
    """The same routes as a single-process gateway (``gateway.http.routes``), answered
    here or by a worker. ``asr``: the ASR server the front started, if any."""
    middlewares = [security_headers_middleware, cors_middleware(config.cors_origins)]
    if not config.tls:
        middlewares.insert(0, loopback_host_middleware)
    app = web.Application(
        middlewares=[*middlewares, error_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[CONFIG] = config
    app[WORKERS] = workers
    app[OFFER_LIMITER] = RateLimiter(rate_per_minute=config.offer_rate, burst=config.offer_rate)
    app[DRAIN] = Drain()
    app[FRONT_REGISTRY] = registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(_WorkerStates(workers))
    app.cleanup_ctx.append(sampling(_tree_usage(workers, asr), registry))
    setup_auth(app, config)
    router = app.router
    router.add_get("/", routes.index)
    router.add_get("/app.js", routes.script)
    router.add_get("/gateway-client.js", routes.client_module)
    router.add_get("/app.css", routes.stylesheet)
    router.add_get("/health", routes.health)
    router.add_get("/openapi.json", routes.api_description)
    router.add_get("/ready", ready)
    router.add_get("/metrics", metrics)
    router.add_get("/config", any_worker)
    router.add_post("/offer", new_session)
    router.add_post("/whip", new_session)
    router.add_route("OPTIONS", "/whip", whip.endpoint_options)
    router.add_get("/whip", whip.no_content)
    router.add_get("/ws", new_websocket)
    for method in ("DELETE", "GET", "PATCH"):
        router.add_route(method, "/sessions/{session_id}", session_route)
    router.add_get("/sessions/{session_id}/events", session_route, name="session-events")
    return app


def _refusal(request: web.Request) -> web.Response | None:
    """Refusals before any worker is asked: draining, measured capacity, the offer rate."""
    app = request.app
    app[DRAIN].refuse_new_session()
    refuse_when_full(app)
    client = client_key(client_address(request))
    wait = app[OFFER_LIMITER].check(client, time.monotonic())
    if wait is not None:
        return rate_limited(wait, "too many offers from your address; try again shortly")
    return None


async def _conversation_token(request: web.Request) -> str | None:
    """The conversation a new session means to continue: ``/ws?conversation=`` or an
    offer's ``session.conversation``. A body that is not JSON is the worker's to refuse."""
    if request.path == "/ws":
        return request.query.get("conversation")
    if request.content_type != "application/json":
        return None
    try:
        body = json.loads(await read_body(request))
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    overrides = body.get("session") if isinstance(body, dict) else None
    token = overrides.get("conversation") if isinstance(overrides, dict) else None
    return token if isinstance(token, str) else None


def _placed(request: web.Request, token: str | None) -> AbstractAsyncContextManager[Child]:
    config = request.app[CONFIG]
    holder = claimed_conversation(token) if token else None
    return request.app[WORKERS].placed(
        client_key(client_address(request)),
        config.max_sessions,
        config.sessions_per_client,
        prefer=worker_of(holder) if holder else None,
    )


async def new_session(request: web.Request) -> web.StreamResponse:
    """POST /offer and /whip: to the worker with the most room."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    # Read whole before a worker is chosen: a slow sender holds up only itself.
    token = await _conversation_token(request)
    async with _placed(request, token) as chosen:
        return await relay(request, chosen)


async def new_websocket(request: web.Request) -> web.StreamResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    # The client's handshake first: a request that cannot become a WebSocket costs no
    # worker a session.
    if not web.WebSocketResponse(protocols=(WS_SUBPROTOCOL,)).can_prepare(request).ok:
        raise web.HTTPBadRequest(reason="not a WebSocket handshake (Upgrade: websocket)")
    async with _placed(request, await _conversation_token(request)) as chosen:
        upstream = await connect_websocket(request, chosen)  # registered when it answers
    if isinstance(upstream, web.Response):
        return upstream
    return await relay_websocket(request, upstream)


async def session_route(request: web.Request) -> web.StreamResponse:
    """Anything under /sessions/<id>: the worker the id names decides (404 included); a
    404 to a guessed ``?token=`` spends the address's budget here, where it is one."""
    budget = GuessBudget(request) if presents_capability(request) else None
    if budget is not None:
        budget.refuse_when_spent()
    try:
        child = request.app[WORKERS].holding(request.match_info["session_id"])
    except SessionNotFound:
        if budget is not None:
            budget.failed()
        raise
    response = await relay(request, child)
    if budget is not None and response.status == 404:
        budget.failed()
    return response


async def any_worker(request: web.Request) -> web.StreamResponse:
    ready = request.app[WORKERS].ready()
    if not ready:
        return _worker_unavailable()
    return await relay(request, ready[0])


async def ready(request: web.Request) -> web.Response:
    """Ready while at least one worker is: its checks (models, Ollama), and the workers'."""
    workers = request.app[WORKERS]
    answers = await worker_texts(workers, "/ready")
    bodies = [body for status, body in answers.values() if isinstance(body, dict)]
    checks: dict[str, Any] = dict(bodies[0].get("checks", {})) if bodies else {}
    up = sorted(name for name, (status, _) in answers.items() if status == 200)
    checks["workers"] = {"ok": bool(up), "ready": up, "total": len(workers.children)}
    if request.app[DRAIN].draining:
        checks["shutdown"] = {"ok": False, "message": "the gateway is shutting down"}
    capacity = capacity_check(request.app)
    if capacity is not None:
        checks["capacity"] = capacity
    ok = all(bool(check.get("ok")) for check in checks.values())
    return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)


def _tree_usage(workers: Workers, asr: Child | None) -> Measure:
    """The whole gateway's usage: the CPU of the front and of every child (None off Linux,
    or while one is restarting), the ASR server's busy time, every worker's sessions."""

    async def measure() -> Usage:
        cpu: float | None = time.process_time()
        for child in [*workers.children.values(), *([asr] if asr is not None else [])]:
            used = child.cpu_seconds()
            cpu = None if cpu is None or used is None else cpu + used
        health = await asr.health() if asr is not None else None
        busy = health.get("busy_s") if health is not None else None
        load = await workers.load("")
        return Usage(
            at=time.monotonic(),
            cpu_s=cpu,
            asr_busy_s=float(busy) if isinstance(busy, int | float) else None,
            sessions=sum(total for total, _ in load.values()),
        )

    return measure


async def metrics(request: web.Request) -> web.Response:
    answers = await worker_texts(request.app[WORKERS], "/metrics")
    texts = {name: body for name, (status, body) in answers.items() if status == 200}
    own = generate_latest(request.app[FRONT_REGISTRY]).decode()
    return web.Response(
        body=merge_metrics(texts, own), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
