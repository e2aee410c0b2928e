"""The serving loop of ``local-ai-gateway serve``: aiohttp's runner, started and stopped by
hand instead of ``web.run_app``, so that the first SIGTERM or Ctrl+C drains
(``gateway.http.drain``) before the process exits, and a second one hurries it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from gateway.errors import ListenError
from gateway.http.auth import GatewayAccessLogger
from gateway.http.state import CONFIG, DRAIN, SESSIONS
from gateway.ops.children import (
    leave_with_front,
    prepare_socket_path,
    private_files,
    remove_socket,
)
from gateway.ops.memory import freeze_startup_heap

logger = logging.getLogger("gateway")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Once every session has ended, what aiohttp still waits for before it closes the
# remaining connections (a WebSocket handler returns when its session ends).
SHUTDOWN_TIMEOUT_S = 5.0


async def serve_until_signalled(
    app: web.Application,
    *,
    ssl_context: ssl.SSLContext | None,
    ready_message: str,
    **handler_args: Any,
) -> None:
    """Serve ``app`` on its configured address until a signal, drain, clean up. Start-up
    errors (a model that cannot be loaded, a port in use) propagate."""
    config = app[CONFIG]
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=GatewayAccessLogger,  # never logs query strings (tickets)
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        **handler_args,
    )
    await runner.setup()  # the app's start-up: models are loaded here
    freeze_startup_heap()  # so that ended sessions' cycles are collected soon, and cheaply
    try:
        if config.worker_socket is not None:  # a media worker: the front reaches it here
            prepare_socket_path(config.worker_socket)
            with private_files():
                await start_site(web.UnixSite(runner, str(config.worker_socket)))
        else:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
            await start_site(site, config.url)
        logger.info("%s", ready_message)
        signalled = asyncio.Event()
        drain = app[DRAIN]

        def received() -> None:
            if signalled.is_set():
                drain.hurry()
            signalled.set()

        orphaned = asyncio.get_running_loop().create_task(
            leave_with_front(received), name="leave-with-front"
        )
        try:
            with signal_handlers(received):
                await signalled.wait()
                logger.info("shutting down: no new sessions; signal again to stop at once")
                await drain.run(app[SESSIONS], config.drain_timeout_s)
        finally:
            orphaned.cancel()
            await asyncio.gather(orphaned, return_exceptions=True)
    finally:
        await runner.cleanup()
        if config.worker_socket is not None:
            remove_socket(config.worker_socket)


async def start_site(site: web.BaseSite, where: str | None = None) -> None:
    """Binds ``site``; :class:`ListenError` naming ``where`` (else the site's own name) if
    the address cannot be had."""
    try:
        await site.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {where or site.name}: {reason}") from exc


@contextlib.contextmanager
def signal_handlers(received: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``received`` on the event loop: through the loop's own
    handlers where the platform has them, else (Windows) ``signal.signal`` hands over."""
    loop = asyncio.get_running_loop()
    on_loop: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    for sig in SIGNALS:
        try:
            loop.add_signal_handler(sig, received)
            on_loop.append(sig)
        except (NotImplementedError, RuntimeError):
            previous[sig] = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(received))
    try:
        yield
    finally:
        for sig in on_loop:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
