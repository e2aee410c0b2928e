"""The client's address as the gateway's limits and logs see it: the connection's own,
or, when that connection comes from a ``--trusted-proxy``, the one its ``X-Forwarded-For``
names (``signalling.proxies``). Every per-client limit and log line asks here rather than
reading ``request.remote``, so that behind a load balancer each person is counted apart."""

from __future__ import annotations

from aiohttp import hdrs, web

from signalling.proxies import forwarded_client


def client_address(request: web.Request) -> str | None:
    # Looked up when called: gateway.http.state imports auth, which imports this module.
    from gateway.http.state import CONFIG

    config = request.app.get(CONFIG)
    if config is not None and config.worker_socket is not None:
        # A media worker: only the front can open its socket, and it names the client.
        forwarded = request.headers.get(hdrs.X_FORWARDED_FOR, "").strip()
        return forwarded or request.remote
    if config is None or not config.trusted_proxies:
        return request.remote
    return forwarded_client(
        request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, ()), config.trusted_proxies
    )
