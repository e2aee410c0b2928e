"""``local-ai-gateway asr-server``: the shared ASR service as a process of its own.

It serves :mod:`gateway.http.transcriptions` on a Unix socket (``--socket``: only this
user may connect, mode 0600 in a 0700 folder it makes) or on a loopback TCP port. Another
address needs ``--api-key-file`` (clients send a key, as to OpenAI) or ``--allow-insecure``.
Gateways use it with ``--asr-url unix:PATH`` or ``--asr-url http://127.0.0.1:PORT``
(``--asr-api-key-file`` for the key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway import __version__
from gateway.errors import KNOWN_ERRORS, ConfigError
from gateway.http.auth import load_api_keys
from gateway.http.transcriptions import ASRServerSettings, build_asr_app
from gateway.ops.children import (
    leave_with_front,
    prepare_socket_path,
    private_files,
    remove_socket,
)
from gateway.ops.config import ASR_DEVICES, ASR_ENGINES, LOG_LEVELS, is_loopback
from gateway.ops.logs import configure_logging
from gateway.ops.memory import freeze_startup_heap, tune_allocator
from gateway.ops.runner import signal_handlers, start_site

logger = logging.getLogger("gateway")

DEFAULT_PORT = 8002
SHUTDOWN_TIMEOUT_S = 5.0  # a running Whisper call is not waited for beyond this


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    defaults = ASRServerSettings()
    parser = argparse.ArgumentParser(
        prog="local-ai-gateway asr-server",
        description="One Whisper model behind OpenAI's POST /v1/audio/transcriptions, "
        "shared by every gateway process that names it with --asr-url.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="serve on this Unix socket (mode 0600)")
    where.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (8002)")
    parser.add_argument("--asr-engine", choices=ASR_ENGINES, default=defaults.engine)
    parser.add_argument("--asr-model", default=defaults.model, help="name or path (tiny.en)")
    parser.add_argument("--asr-device", choices=ASR_DEVICES, default=defaults.device)
    parser.add_argument(
        "--max-pending",
        type=int,
        default=defaults.max_pending,
        help="jobs queued or running from all clients; beyond it 503 (default 32)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="utterances per model call (default: 8 on a GPU, 1 on a CPU)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="clients must send one of these keys (one per line) as Authorization: Bearer",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help="serve TCP on a non-loopback address (the server has no authentication)",
    )
    args = parser.parse_args(list(argv))
    if not 1 <= args.port <= 65535:
        parser.error(f"--port: must be between 1 and 65535, got {args.port}")
    if args.max_pending < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--max-pending and --batch-size must be at least 1")
    if (
        args.socket is None
        and not is_loopback(args.host)
        and not (args.allow_insecure or args.api_key_file)
    ):
        parser.error(
            f"--host {args.host}: anyone who reaches the port could use this server. Give "
            "it --api-key-file (and TLS in front of it), or use --socket, a loopback "
            "address, or --allow-insecure"
        )
    return args


def asr_server_command(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    tune_allocator()  # before the model loads and the threads start
    try:
        keys = load_api_keys(args.api_key_file, "--api-key-file") if args.api_key_file else []
    except ConfigError as exc:
        print(f"local-ai-gateway asr-server: error: {exc}", file=sys.stderr)
        return 2
    settings = ASRServerSettings(
        api_keys=tuple(keys),
        engine=args.asr_engine,
        model=args.asr_model,
        device=args.asr_device,
        max_pending=args.max_pending,
        batch_size=args.batch_size,
    )
    where = f"unix:{args.socket}" if args.socket else f"http://{args.host}:{args.port}"
    try:
        asyncio.run(_serve(build_asr_app(settings), args.socket, args.host, args.port, where))
    except (ConfigError, *KNOWN_ERRORS) as exc:  # a socket in use, a model that cannot load
        print(f"local-ai-gateway asr-server: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the socket's folder cannot be made, out of file descriptors…
        print(f"local-ai-gateway asr-server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while the model loads
        return 130
    return 0


async def _serve(
    app: web.Application, socket_path: Path | None, host: str, port: int, where: str
) -> None:
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,  # a client that hangs up takes its queued job with it
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,  # one line per utterance is noise; errors are still logged
    )
    if socket_path is not None:
        prepare_socket_path(socket_path)  # before seconds of model loading
    await runner.setup()  # loads the model
    freeze_startup_heap()  # full collections then look only at what serving makes
    bound = False
    try:
        site: web.BaseSite
        if socket_path is not None:
            site = web.UnixSite(runner, str(socket_path))
            with private_files():
                await start_site(site, where)
            bound = True
            os.chmod(socket_path, 0o600)
        else:
            site = web.TCPSite(runner, host, port)
            await start_site(site, where)
        logger.info("Local AI Gateway %s ASR server ready on %s", __version__, where)
        stop = asyncio.Event()
        orphaned = asyncio.get_running_loop().create_task(
            leave_with_front(stop.set), name="leave-with-front"
        )
        try:
            with signal_handlers(stop.set):
                await stop.wait()
        finally:
            orphaned.cancel()
            await asyncio.gather(orphaned, return_exceptions=True)
        logger.info("ASR server stopping")
    finally:
        await runner.cleanup()
        if socket_path is not None and bound:
            remove_socket(socket_path)
