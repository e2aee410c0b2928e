"""``serve`` with media workers: this process becomes the front (``gateway.http.front``),
starts the ASR server and N workers (``gateway.ops.children``), and stops them in order.

Each worker is ``local-ai-gateway serve`` with the user's own flags (and so the same
environment and TOML file) and a few of the front's after them, which win: its name, its
socket, the shared ASR server, and no TLS of its own. It keeps the user's ``--auth`` but
authenticates nobody itself: the front does, and names who in each request (the socket
admits only this user); the mode decides whose sessions a request may reach.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.http.auth import GatewayAccessLogger
from gateway.http.front import Workers, build_front_app
from gateway.http.state import DRAIN
from gateway.ops.children import Child, gateway_command, private_folder, remove_folder
from gateway.ops.config import Config
from gateway.ops.runner import SHUTDOWN_TIMEOUT_S, signal_handlers, start_site

logger = logging.getLogger("gateway")

# Beyond --drain-timeout-s: how long a worker may take to tell its sessions and exit.
WORKER_STOP_GRACE_S = 10.0
ASR_STOP_TIMEOUT_S = 10.0  # a running Whisper call finishes first


def asr_server_argv(config: Config, socket: Path) -> list[str]:
    return gateway_command(
        "asr-server",
        "--socket", str(socket),
        "--asr-engine", config.asr_engine,
        "--asr-model", config.asr_model,
        "--asr-device", config.asr_device,
        "--log-level", config.log_level,
        "--log-format", config.log_format,
    )  # fmt: skip


def worker_argv(argv: Sequence[str], name: str, socket: Path, asr_url: str | None) -> list[str]:
    """The user's flags, then the front's (the last of a flag wins)."""
    extra = ["--workers", "1", "--worker-id", name, "--worker-socket", str(socket)]
    extra += ["--no-tls"]
    if asr_url is not None:
        extra += ["--asr-url", asr_url]
    return gateway_command("serve", *argv, *extra)


async def serve_front(
    config: Config,
    argv: Sequence[str],
    count: int,
    *,
    ssl_context: ssl.SSLContext | None,
    ready_message: str,
    **handler_args: Any,
) -> None:
    """Start the ASR server (unless ``--asr-url`` names one) and ``count`` workers, serve
    the front until a signal, then drain: new sessions refused, each worker told to drain
    its own (a second signal hurries them), the ASR server stopped last."""
    folder = private_folder("local-ai-gateway-")
    children: list[Child] = []
    try:
        asr = None
        if not config.asr_url:
            socket = folder / "asr.sock"
            asr = Child("asr-server", asr_server_argv(config, socket), socket)
            children.append(asr)
        asr_url = f"unix:{asr.socket}" if asr is not None else None
        workers = [
            Child(
                name,
                worker_argv(argv, name, folder / f"{name}.sock", asr_url),
                folder / f"{name}.sock",
            )
            for name in (f"w{i}" for i in range(1, count + 1))
        ]
        children.extend(workers)
        # Built first: it reads the key files, whose faults must not wait for the models.
        app = build_front_app(config, Workers(workers), asr)
        if asr is not None:
            await asr.start()
        await asyncio.gather(*(worker.start() for worker in workers))
        await _serve(
            app,
            config,
            workers,
            ssl_context=ssl_context,
            ready_message=f"{ready_message} ({count} media workers)",
            **handler_args,
        )
    finally:
        # Workers first (they may still finish a transcription), the ASR server last.
        for child in reversed(children):
            timeout = ASR_STOP_TIMEOUT_S if child.name == "asr-server" else WORKER_STOP_GRACE_S
            await child.stop(timeout)
        remove_folder(folder)


async def _serve(
    app: web.Application,
    config: Config,
    workers: list[Child],
    *,
    ssl_context: ssl.SSLContext | None,
    ready_message: str,
    **handler_args: Any,
) -> None:
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=GatewayAccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        **handler_args,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await start_site(site, config.url)
        logger.info("%s", ready_message)
        signals = 0
        signalled = asyncio.Event()

        def received() -> None:
            nonlocal signals
            signals += 1
            if signals > 1:  # a second signal: the workers' own drains hurry
                for worker in workers:
                    worker.signal_again()
            signalled.set()

        with signal_handlers(received):
            await signalled.wait()
            logger.info("shutting down: no new sessions; signal again to stop at once")
            app[DRAIN].draining = True  # new sessions 503, /ready 503
            await asyncio.gather(
                *(w.stop(config.drain_timeout_s + WORKER_STOP_GRACE_S) for w in workers)
            )
    finally:
        await runner.cleanup()
