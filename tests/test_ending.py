"""What a client is told when the gateway ends its session, and when it is told at all."""

from __future__ import annotations

import pytest

from signalling import protocol
from signalling.ending import PUBLIC_REASONS, client_reachable, public_reason


def test_the_contract_lists_six_reasons() -> None:
    assert PUBLIC_REASONS == (
        "client",
        "idle-timeout",
        "max-duration",
        "shutdown",
        "worker-lost",
        "error",
    )


@pytest.mark.parametrize(
    ("internal", "public"),
    [
        ("deleted", "client"),
        ("disconnected", "client"),
        ("connection-closed", "client"),
        ("replaced", "client"),
        ("idle", "idle-timeout"),
        ("max-duration", "max-duration"),
        ("connect-timeout", "error"),
        ("connection-failed", "error"),
        ("negotiation-failed", "error"),
        ("shutdown", "shutdown"),
        ("worker-lost", "worker-lost"),
        ("error", "error"),
        ("client", "client"),
        ("idle-timeout", "idle-timeout"),
        ("something-new", "error"),  # unknown: the client must not take it lightly
    ],
)
def test_reasons_map_onto_the_contract(internal: str, public: str) -> None:
    assert public_reason(internal) == public


@pytest.mark.parametrize(
    ("reason", "reachable"),
    [
        ("deleted", True),
        ("idle", True),
        ("max-duration", True),
        ("shutdown", True),
        ("error", True),
        ("worker-lost", True),
        ("connect-timeout", True),  # its channel may never have opened: the session checks
        ("disconnected", False),
        ("connection-closed", False),
        ("connection-failed", False),
        ("negotiation-failed", False),
    ],
)
def test_a_client_that_is_gone_is_not_written_to(reason: str, reachable: bool) -> None:
    assert client_reachable(reason) is reachable


def test_the_event() -> None:
    assert protocol.session_ended("shutdown") == {"type": "session.ended", "reason": "shutdown"}
