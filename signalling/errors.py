"""Errors of the signalling layer: offers, sessions, the client protocol, ICE policy.

Each carries a stable ``code`` (the contract's error codes); ``gateway.http.middleware``
maps them to HTTP statuses and the conversation to ``error`` events. Nothing here knows
about HTTP.
"""

from __future__ import annotations


class SignallingError(Exception):
    code = "signalling"


class OfferError(SignallingError):
    """An SDP offer or its JSON envelope is unacceptable."""

    code = "bad_offer"


class OfferTooLarge(OfferError):
    """An SDP offer over ``signalling.offer.MAX_SDP_BYTES``, or an offer body over its
    limit: the contract's "too large" (413), though the body fitted the HTTP limit."""

    code = "too_large"


class SessionLimitError(SignallingError):
    """Every session slot is taken."""

    code = "session_limit"


class SessionNotFound(SignallingError):
    code = "not_found"


class ProtocolError(SignallingError):
    """A client message that is not JSON, too big, unknown or invalid."""

    code = "bad_message"


class TransportClosed(SignallingError):
    """The client is gone: nothing more can be written to it."""

    code = "disconnected"


class IcePolicyError(SignallingError):
    """An ICE address or UDP port range that cannot be used; names the flag."""

    code = "bad_config"

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.detail = message
