"""Turns every failure into the JSON error shape of the contract; never a traceback.

``{"error": {"code": "...", "message": "..."}}`` with the status that fits. HTTP statuses
belong to ``gateway`` alone: each layer raises its own errors (the whole tree is drawn in
``gateway.errors``), and this maps them; a few gateway modules answer directly (429, 403,
415).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import (
    KNOWN_ERRORS,
    ASRBusyError,
    ASRStaleError,
    ASRUnavailable,
    AudioTooLong,
    AuthError,
    InvalidAudio,
    OfferError,
    OfferTooLarge,
    ProtocolError,
    SessionLimitError,
    SessionNotFound,
    TTSVoiceMissing,
    UnsupportedLanguage,
)
from gateway.ops.logs import loggable

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS: dict[type[Exception], int] = {
    AuthError: 401,
    OfferTooLarge: 413,  # before OfferError, which it is
    OfferError: 400,
    ProtocolError: 400,
    SessionNotFound: 404,
    SessionLimitError: 503,
    UnsupportedLanguage: 400,
    TTSVoiceMissing: 400,
    AudioTooLong: 413,  # before InvalidAudio, which it is
    InvalidAudio: 400,
    # The ASR server's own answers (gateway.http.transcriptions): try again shortly.
    ASRBusyError: 503,
    ASRStaleError: 503,
    ASRUnavailable: 503,
}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}
SESSION_RETRY_AFTER_S = 5
ASR_RETRY_AFTER_S = 1  # a recogniser's queue moves in about a second
AUTH_REALM = "local-ai-gateway"
_BODY_HEADERS = frozenset({"content-type", "content-length"})


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _error_headers(exc: Exception) -> dict[str, str] | None:
    if isinstance(exc, SessionLimitError):
        return {"Retry-After": str(SESSION_RETRY_AFTER_S)}
    if isinstance(exc, ASRBusyError | ASRStaleError | ASRUnavailable):
        return {"Retry-After": str(ASR_RETRY_AFTER_S)}
    if isinstance(exc, AuthError):
        # RFC 6750 section 3: no error code when the request carried no credentials at all.
        challenge = f'Bearer realm="{AUTH_REALM}"'
        if not exc.missing:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except KNOWN_ERRORS as exc:
        status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 500)
        headers = _error_headers(exc)
        if status >= 500 and status != 503:
            logger.error("%s %s failed: %s", request.method, loggable(request.path), exc)
        return json_error(status, exc.code, str(exc), headers)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise  # redirects, and errors that already have our shape
        code = _HTTP_CODES.get(exc.status, "http_error")
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return json_error(exc.status, code, exc.reason, kept or None)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, loggable(request.path))
        return json_error(500, "internal", "internal error; the gateway log has details")


def retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, at least 1, never earlier than ``seconds``."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def rate_limited(retry_after_s: float, message: str) -> web.Response:
    """429 in the contract's error shape."""
    return json_error(429, "rate_limited", message, retry_after(retry_after_s))
