"""TURN for clients off the VPN (``--turn-url``, ``--turn-secret-file``, ``--turn-ttl-s``).

A phone on mobile data and a gateway at home behind NAT both reach a TURN server (coturn on
a small public host) outwards, and the media flows relay to relay; the gateway opens no
port to the Internet. ``GET /config`` hands each client its own short-lived credential
(``signalling.turn``), and every peer connection of the gateway gathers a relayed
candidate from the same server with a credential of its own.

Who gets a credential: with ``--auth`` on, only a request to ``/config`` that carries valid
credentials (``Authorization: Bearer``; checked by the auth middleware, failures counted as
on any guarded route), bound to its principal; without them ``/config`` stays open but lists
no relay. With ``--auth none`` every client is trusted by the operator's choice (loopback,
or ``--allow-insecure``), and gets one as ``anonymous``. The secret itself is read once at
start-up and never logged or sent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aiohttp import web

from gateway.errors import ConfigError
from gateway.http.auth import principal_of
from gateway.http.state import CONFIG
from gateway.ops.config import Config
from signalling.peer import IceServer
from signalling.turn import TurnRelay, parse_secret

logger = logging.getLogger(__name__)

TURN_RELAY = web.AppKey("turn_relay", TurnRelay)  # absent without --turn-url
SECRET_FLAG = "--turn-secret-file"
GATEWAY_USER = "gateway"  # the user part of the gateway's own credentials
ANONYMOUS_USER = "anonymous"  # every client's, with --auth none


def load_turn_secret(path: Path) -> bytes:
    """The secret shared with the TURN server; :class:`ConfigError` naming the flag if the
    file cannot be read or holds no usable secret (the message never quotes it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(SECRET_FLAG, f"cannot read {path}: {exc.strerror}") from exc
    try:
        return parse_secret(data)
    except ValueError as exc:
        raise ConfigError(SECRET_FLAG, f"{path} {exc}") from exc


def setup_turn(app: web.Application, config: Config) -> None:
    """Puts the relay on ``app[TURN_RELAY]`` when ``--turn-url`` is given (reading the secret
    now); nothing otherwise."""
    if not config.turn_urls:
        return
    if config.turn_secret_file is None:  # load_config refuses this; a Config built by hand
        raise ConfigError(SECRET_FLAG, "required with --turn-url")
    secret = load_turn_secret(config.turn_secret_file)
    app[TURN_RELAY] = TurnRelay(config.turn_urls, secret, config.turn_ttl_s)
    logger.info(
        "TURN relay %s for clients and the gateway (credentials last %d s%s)",
        ", ".join(config.turn_urls),
        config.turn_ttl_s,
        "" if config.auth == "none" else "; authenticated clients only",
    )


def client_ice_servers(request: web.Request, now: float) -> list[dict[str, object]]:
    """``iceServers`` for the client asking: the configured STUN/TURN URLs, then the relay
    with a credential for the client's principal (none for an unauthenticated request
    when auth is on). ``now``: Unix time."""
    config = request.app[CONFIG]
    servers: list[dict[str, object]] = [{"urls": url} for url in config.ice_servers]
    relay = request.app.get(TURN_RELAY)
    if relay is None:
        return servers
    if config.auth == "none":
        subject = ANONYMOUS_USER
    else:
        principal = principal_of(request)
        if principal is None:
            return servers
        subject = principal.subject
    servers.append(relay.ice_server(subject, now))
    return servers


def gateway_ice_servers(app: web.Application, now: float | None = None) -> list[IceServer]:
    """What a new peer connection of the gateway uses: the relay first (aiortc takes the
    first TURN server it can use and ignores the rest), then ``--ice-server``."""
    config = app[CONFIG]
    relay = app.get(TURN_RELAY)
    if relay is None:
        return list(config.ice_servers)
    when = time.time() if now is None else now
    return [relay.rtc_ice_server(GATEWAY_USER, when), *config.ice_servers]
