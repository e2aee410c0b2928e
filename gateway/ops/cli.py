"""``local-ai-gateway serve`` (also ``python -m gateway``): the process around the app."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certs.authority import certificate_warnings, ensure_certificates
from certs.trust import trust_instructions
from gateway import __version__
from gateway.errors import KNOWN_ERRORS, CertificateError, ConfigError
from gateway.http.app import build_app
from gateway.ops.asr_server import asr_server_command
from gateway.ops.config import Config, load_config, worker_count
from gateway.ops.doctor import doctor_command
from gateway.ops.logs import configure_logging
from gateway.ops.memory import tune_allocator
from gateway.ops.runner import serve_until_signalled
from gateway.ops.workers import serve_front

logger = logging.getLogger("gateway")

# An idle keep-alive connection is closed after this; browsers reconnect cheaply.
KEEPALIVE_TIMEOUT_S = 30.0
# The request line and each header at most 8 KiB, at most 64 headers: far above what a
# browser sends, and small enough that nobody makes the gateway parse megabytes of them.
HEADER_LIMITS: dict[str, Any] = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64}

USAGE = """\
usage: local-ai-gateway serve [flags]    run the gateway (flags: serve --help)
       local-ai-gateway certs --host IP_OR_NAME [--host ...] [--cert-dir DIR]
                                         make or renew the server certificate (and the CA)
       local-ai-gateway doctor [serve flags]  check the set-up; each line ok/warn/fail + fix
       local-ai-gateway asr-server [--socket PATH | --host H --port P] [flags]
                                         one Whisper model for many gateways (--asr-url)
       local-ai-gateway --version
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-V", "--version"):
        print(f"local-ai-gateway {__version__}")
        return 0
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args and args[0] == "certs":
        return certs_command(args[1:])
    if args and args[0] == "doctor":
        return doctor_command(args[1:])
    if args and args[0] == "asr-server":
        return asr_server_command(args[1:])
    # `serve` is the default command, so `python -m gateway --port 9000` works too.
    if args and args[0] == "serve":
        args = args[1:]
    elif args and not args[0].startswith("-"):
        print(f"local-ai-gateway: error: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 2
    return serve(config, args)


def certs_command(argv: Sequence[str]) -> int:
    """The job mkcert does: a CA (reused when present) and a server certificate for
    exactly the given hosts, plus localhost."""
    parser = argparse.ArgumentParser(
        prog="local-ai-gateway certs",
        description="Make the local CA (if missing) and a new server certificate.",
    )
    parser.add_argument("--cert-dir", type=Path, default=Config().cert_dir)
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        help="an address or name the gateway is reached by (repeatable), e.g. 10.8.0.1",
    )
    args = parser.parse_args(list(argv))
    hosts = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *args.host]))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = ensure_certificates(args.cert_dir, hosts, renew_server=True)
    except CertificateError as exc:
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 1
    print(f"server certificate: {paths.server_cert} (key {paths.server_key})")
    print(f"covers: {', '.join(hosts)}")
    if paths.ca_cert is not None:
        print()
        print(trust_instructions(paths.ca_cert))
    if paths.ca_key is not None:
        print(
            f"Keep {paths.ca_key} secret. Once the certificates you need exist, you can move "
            "it off this machine; bring it back only to sign a new server certificate."
        )
    return 0


def serve(config: Config, argv: Sequence[str] = ()) -> int:
    """Run the gateway: in this process, or (``--workers`` above 1) as the front of media
    workers started with ``argv``, the flags it was given."""
    configure_logging(config.log_level, config.log_format)
    tuned = tune_allocator()  # before the model loads and the threads start
    if tuned:
        logger.debug("C allocator: %s", ", ".join(tuned))
    try:
        ssl_context = _tls_context(config) if config.tls else None
    except CertificateError as exc:
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 1
    ready_message = (
        f"media worker {config.worker_id} ready"
        if config.worker_socket is not None
        else f"Local AI Gateway {__version__} ready: open {config.url}"
    )
    workers = worker_count(config)
    try:
        if workers > 1:
            running = serve_front(
                config,
                argv,
                workers,
                ssl_context=ssl_context,
                ready_message=ready_message,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                **HEADER_LIMITS,
            )
        else:
            running = serve_until_signalled(
                build_app(config),
                ssl_context=ssl_context,
                ready_message=ready_message,
                keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                **HEADER_LIMITS,
            )
    except ConfigError as exc:  # e.g. an unreadable key file
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(running)
    except ConfigError as exc:  # the front's key files, read before its workers start
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 2
    except KNOWN_ERRORS as exc:  # the port is taken, a model cannot load, a worker died…
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl+C while the models load, before the drain is armed
        return 130
    except OSError as exc:  # a private folder cannot be made, out of file descriptors…
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _tls_context(config: Config) -> ssl.SSLContext:
    hosts = ["localhost", "127.0.0.1", "::1"]
    if config.host not in hosts and config.host not in ("0.0.0.0", "::"):
        hosts.append(config.host)
    paths = ensure_certificates(config.cert_dir, hosts)
    if paths.created and paths.ca_cert is not None:
        logger.info(
            "made a local certificate authority: %s\n%s",
            paths.ca_cert,
            trust_instructions(paths.ca_cert),
        )
    for warning in certificate_warnings(paths.server_cert, config.host, now=datetime.now(UTC)):
        logger.warning("certificate: %s", warning)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(paths.server_cert, paths.server_key)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load {paths.server_cert}: {exc}") from exc
    return context
