"""The gateway's own errors, and the whole tree in one place for readers.

Each layer defines its errors at its bottom and knows nothing of HTTP; ``gateway`` alone
maps them (``gateway.http.middleware`` to statuses, the conversation to ``error`` events).
Third-party exceptions are converted where they are caught, with ``raise ... from exc``::

    certs.errors.CertificateError        the local CA or server certificate
    signalling.errors.SignallingError
    ├── OfferError                       an SDP offer or its envelope (400)
    │   └── OfferTooLarge                an SDP or offer over its limit (413)
    ├── SessionLimitError                --max-sessions reached (503 + Retry-After)
    │   └── AtCapacity (gateway)         no room measured for one more session (503)
    ├── SessionNotFound                  no session with that id (404)
    ├── ProtocolError                    a bad client message (error event, or 400)
    ├── TransportClosed                  the client is gone (ends its session)
    └── IcePolicyError                   a bad --ice-address / --udp-ports
    media.errors.MediaError
    ├── ASRError                         the speech recogniser failed
    │   ├── ASRBusyError                 too much speech waiting (retryable)
    │   ├── ASRStaleError                dropped before it ran: deadline passed, or evicted
    │   ├── ASRUnavailable               the ASR server is down or slow (retryable)
    │   ├── ModelLoadError               a model cannot be found, downloaded or converted
    │   └── UnsupportedLanguage          the model cannot do that language
    ├── InvalidAudio                     an upload that cannot be decoded (400)
    │   └── AudioTooLong                 more than one request may carry (413)
    ├── TTSError                         speech synthesis failed
    │   ├── TTSUnavailable               the engine or speech server is down or slow
    │   └── TTSVoiceMissing              no such voice (or not per session)
    └── TurnModelError                   the --turn-model is missing or corrupt
    gateway.errors.GatewayError
    ├── ConfigError                      a bad flag, variable or TOML key (names the flag)
    ├── ListenError                      the address or socket cannot be served on
    ├── ChildFailed (gateway.ops.children)  a worker or the ASR server cannot start
    ├── ResumeError (conversation.resume)   a conversation token that resumes nothing
    ├── AuthError                        missing or unacceptable credentials (401)
    └── LLMError                         the language model (Ollama) failed
        ├── LLMUnavailable               Ollama cannot be reached (retryable)
        ├── LLMModelMissing              the model is not pulled
        ├── LLMTimeout                   no first token, or no end, in time (retryable)
        └── LLMStreamBroken              the answer stopped mid-stream (retryable)
"""

from __future__ import annotations

from certs.errors import CertificateError
from media.errors import (
    ASRBusyError,
    ASRError,
    ASRStaleError,
    ASRUnavailable,
    AudioTooLong,
    InvalidAudio,
    MediaError,
    ModelLoadError,
    TTSError,
    TTSUnavailable,
    TTSVoiceMissing,
    TurnModelError,
    UnsupportedLanguage,
)
from signalling.errors import (
    IcePolicyError,
    OfferError,
    OfferTooLarge,
    ProtocolError,
    SessionLimitError,
    SessionNotFound,
    SignallingError,
)

__all__ = [
    "KNOWN_ERRORS",
    "ASRBusyError",
    "ASRError",
    "ASRStaleError",
    "ASRUnavailable",
    "AtCapacity",
    "AudioTooLong",
    "AuthError",
    "CertificateError",
    "ConfigError",
    "GatewayError",
    "IcePolicyError",
    "InvalidAudio",
    "LLMError",
    "LLMModelMissing",
    "LLMStreamBroken",
    "LLMTimeout",
    "LLMUnavailable",
    "ListenError",
    "MediaError",
    "ModelLoadError",
    "OfferError",
    "OfferTooLarge",
    "ProtocolError",
    "SessionLimitError",
    "SessionNotFound",
    "SignallingError",
    "TTSError",
    "TTSUnavailable",
    "TTSVoiceMissing",
    "TurnModelError",
    "UnsupportedLanguage",
]


class GatewayError(Exception):
    """Base of the errors the gateway package itself raises on purpose."""

    code = "internal"


# Every error any layer raises on purpose: what a boundary catches to answer readably.
KNOWN_ERRORS = (GatewayError, SignallingError, MediaError, CertificateError)


class ConfigError(GatewayError):
    code = "bad_config"

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class ListenError(GatewayError):
    """Start-up could not bind its address (the port is taken, not allowed) or socket."""

    code = "cannot_listen"


class AtCapacity(SessionLimitError):
    """What the open sessions measurably cost leaves no room for one more (503 +
    Retry-After, as the session limit): ``gateway.ops.capacity``."""

    code = "at_capacity"


class AuthError(GatewayError):
    """Says what is wrong with the credentials, never what they were."""

    code = "unauthorized"

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        # No credentials at all, as opposed to bad ones (RFC 6750 omits the error code then).
        self.missing = missing


class LLMError(GatewayError):
    code = "llm_error"
    retryable = False


class LLMUnavailable(LLMError):
    code = "llm_unavailable"
    retryable = True


class LLMModelMissing(LLMError):
    code = "llm_model_missing"


class LLMTimeout(LLMError):
    code = "llm_timeout"
    retryable = True


class LLMStreamBroken(LLMError):
    code = "llm_stream_broken"
    retryable = True
