"""Why a session ended, as its client is told (``session.ended``), and whether it can be
told at all. Pure: the gateway's own close reason in, the contract's out.

The gateway's reasons say what happened (``deleted``, ``idle``, ``connection-failed``...:
they label ``gateway_sessions_ended_total`` and the log); the client's say what it should
do next. ``client``, ``idle-timeout`` and ``max-duration``: nothing, or ask the person
first; ``shutdown``, ``worker-lost`` and ``error``: reconnect, with back-off.

A session that ends because its client is gone (the socket closed, the peer connection
failed or closed, negotiation broke off) writes nothing to it: there is no one to read it.
Subscribers of its events (Server-Sent Events) still get ``session.ended``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import get_args

from signalling.protocol import EndedReason

PUBLIC_REASONS: tuple[EndedReason, ...] = get_args(EndedReason)

REASONS: Mapping[str, EndedReason] = MappingProxyType(
    {
        # the contract's own names, used as they are
        **{reason: reason for reason in PUBLIC_REASONS},
        "deleted": "client",  # DELETE /sessions/<id> (the page's disconnect, WHIP teardown)
        "disconnected": "client",  # the socket or data channel went away
        "connection-closed": "client",
        "replaced": "client",  # the client resumed its conversation on a new session
        "idle": "idle-timeout",
        "connect-timeout": "error",  # answered, but no media path ever opened
        "connection-failed": "error",  # ICE consent lost: the network, not the person
        "negotiation-failed": "error",
    }
)

# Ends that mean the client cannot be reached any more.
UNREACHABLE = frozenset(
    {"disconnected", "connection-closed", "connection-failed", "negotiation-failed"}
)


def public_reason(reason: str) -> EndedReason:
    """The contract's reason for a close reason of the gateway's; an unknown one is an error."""
    return REASONS.get(reason, "error")


def client_reachable(reason: str) -> bool:
    """Whether a session closed for ``reason`` may still write to its client."""
    return reason not in UNREACHABLE
