"""The gateway's one error tree.

Lower layers (``signalling``, ``media``, ``certs``) raise these; ``gateway.middleware`` maps
them to HTTP statuses and the session loop maps them to ``error`` events. Third-party
exceptions are converted at the boundary with ``raise ... from exc``::

    GatewayError
    ├── ConfigError          a bad flag, variable or TOML key (names the flag)
    ├── CertificateError     the local CA or server certificate cannot be made or read
    ├── OfferError           an SDP offer or its JSON envelope is unacceptable (400)
    ├── SessionLimitError    --max-sessions reached (503 + Retry-After)
    ├── SessionNotFound      no session with that id (404)
    ├── ProtocolError        a client message that is not JSON, too big or unknown
    ├── AuthError            missing or unacceptable credentials (401)
    ├── ASRError             the speech recogniser failed
    │   └── ModelLoadError   the model cannot be found, downloaded or converted
    └── LLMError             the language model (Ollama) failed
        ├── LLMUnavailable   Ollama cannot be reached (retryable)
        ├── LLMModelMissing  the model is not pulled
        ├── LLMTimeout       no first token, or no end, in time (retryable)
        └── LLMStreamBroken  the answer stopped mid-stream (retryable)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    code = "internal"


class ConfigError(GatewayError):
    code = "bad_config"

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class CertificateError(GatewayError):
    code = "certificate"


class OfferError(GatewayError):
    code = "bad_offer"


class SessionLimitError(GatewayError):
    code = "session_limit"


class SessionNotFound(GatewayError):
    code = "not_found"


class ProtocolError(GatewayError):
    code = "bad_message"


class AuthError(GatewayError):
    """Says what is wrong with the credentials, never what they were."""

    code = "unauthorized"

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        # No credentials at all, as opposed to bad ones (RFC 6750 omits the error code then).
        self.missing = missing


class ASRError(GatewayError):
    code = "asr_failed"


class ModelLoadError(ASRError):
    code = "asr_model"


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
