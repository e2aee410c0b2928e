"""The language model: Ollama through its official async client, with timeouts and errors
that say what to do.

Only ``chat`` (streamed) and ``list`` (for readiness) are ever called, always with the
configured model: nothing a client sends is forwarded to Ollama as a request of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import pydantic

from gateway.errors import (
    LLMError,
    LLMModelMissing,
    LLMStreamBroken,
    LLMTimeout,
    LLMUnavailable,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMSettings:
    host: str = "http://127.0.0.1:11434"
    model: str = "llama3.2"
    options: Mapping[str, float | int] = field(default_factory=dict)
    keep_alive: str = "30m"  # keeps the model in memory between turns
    connect_timeout_s: float = 2.0
    first_token_timeout_s: float = 30.0
    total_timeout_s: float = 120.0


@dataclass(frozen=True)
class LLMStatus:
    reachable: bool
    model_present: bool
    message: str
    answered_with_error: bool = False  # Ollama answered, but with an error status
    foreign: bool = False  # something answered that is not Ollama

    @property
    def ok(self) -> bool:
        return self.reachable and self.model_present


def _same_model(wanted: str, name: str) -> bool:
    # Ollama treats "llama3.2" as "llama3.2:latest".
    def full(n: str) -> str:
        return n if ":" in n else f"{n}:latest"

    return full(wanted) == full(name)


class OllamaChat:
    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.available: bool | None = None  # last known; None before any contact
        self._status: tuple[float, LLMStatus] | None = None
        self._status_lock = asyncio.Lock()
        self._client = ollama.AsyncClient(
            host=settings.host,
            # Our own timers bound the first token and the whole answer; httpx bounds
            # the connection so "Ollama is not running" is known within seconds.
            timeout=httpx.Timeout(None, connect=settings.connect_timeout_s, pool=5.0),
            trust_env=False,  # a proxy from the environment must not see local traffic
        )

    @property
    def model(self) -> str:
        return self.settings.model

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def recent_status(self, max_age_s: float = 2.0) -> LLMStatus:
        """``check()``, at most once per ``max_age_s`` however often it is asked (``/ready``
        is open to anyone who can reach the port: it must not drive Ollama)."""
        async with self._status_lock:
            now = asyncio.get_running_loop().time()
            if self._status is None or now - self._status[0] > max_age_s:
                self._status = (now, await self.check())
            return self._status[1]

    async def check(self) -> LLMStatus:
        """Is Ollama reachable, and is the model pulled?"""
        host, model = self.settings.host, self.settings.model
        try:
            listing = await asyncio.wait_for(
                self._client.list(), self.settings.connect_timeout_s + 3.0
            )
        except (TimeoutError, ConnectionError, httpx.TransportError) as exc:
            self.available = False
            return LLMStatus(False, False, self._unreachable(exc).args[0])
        except ollama.ResponseError as exc:
            self.available = False
            return LLMStatus(
                True, False, f"Ollama at {host} answered {exc.status_code}: {exc}", True
            )
        except (ValueError, pydantic.ValidationError) as exc:  # something else on that port
            self.available = False
            return LLMStatus(
                False,
                False,
                f"{host} does not answer like Ollama ({type(exc).__name__}): check --ollama-host",
                foreign=True,
            )
        names = [m.model or "" for m in listing.models]
        present = any(_same_model(model, n) for n in names)
        self.available = present
        if not present:
            return LLMStatus(True, False, self._missing().args[0])
        return LLMStatus(True, True, f"Ollama at {host} has {model}")

    async def stream(self, messages: Sequence[Mapping[str, str]]) -> AsyncGenerator[str, None]:
        """Yields the answer's pieces as Ollama produces them; raises :class:`LLMError`."""
        s = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        produced = False
        chunks: Any = None
        try:
            chunks = await self._client.chat(
                model=s.model,
                messages=list(messages),
                stream=True,
                options=dict(s.options) or None,
                keep_alive=s.keep_alive,
            )
            # A deadline per step, not a timeout context around the loop: this generator
            # yields to its consumer, and a context would cancel whatever the consumer
            # was doing when it fired. Not wait_for: on 3.11 it drops a cancellation
            # (a barge-in) that arrives as the step completes.
            while True:
                limit = s.total_timeout_s if produced else s.first_token_timeout_s
                left = started + limit - loop.time()
                try:
                    async with asyncio.timeout(max(left, 0.0)):
                        part = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise LLMTimeout(
                        f"Ollama took longer than {limit:.0f} s for the whole answer; "
                        "ask for a shorter one, or raise --llm-timeout"
                        if produced
                        else f"Ollama took longer than {limit:.0f} s for the first word; "
                        "the model may still be loading: try again, or raise "
                        "--llm-first-token-timeout"
                    ) from None
                self.available = True
                content = part.message.content or ""
                if content:
                    produced = True
                    yield content
                if part.done:
                    return
            # Ollama always ends with a "done" line; a stream that just stops was cut off.
            raise LLMStreamBroken("Ollama ended the answer without finishing it")
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                self.available = False
                raise self._missing() from exc
            if produced:
                raise LLMStreamBroken(f"Ollama failed mid-answer: {exc.error}") from exc
            raise LLMError(f"Ollama refused the request ({exc.status_code}): {exc.error}") from exc
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.available = False
            raise self._unreachable(exc) from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise LLMStreamBroken(
                f"the connection to Ollama broke mid-answer ({type(exc).__name__})"
            ) from exc
        except (ValueError, pydantic.ValidationError) as exc:  # a line that is not Ollama's
            raise LLMStreamBroken(
                f"Ollama sent something unreadable ({type(exc).__name__})"
            ) from exc
        finally:
            if chunks is not None:
                await chunks.aclose()

    def _unreachable(self, exc: BaseException) -> LLMUnavailable:
        return LLMUnavailable(
            f"cannot reach Ollama at {self.settings.host} ({type(exc).__name__}): "
            "start it with `ollama serve`, or set --ollama-host"
        )

    def _missing(self) -> LLMModelMissing:
        model = self.settings.model
        return LLMModelMissing(
            f"Ollama does not have the model {model!r}: run `ollama pull {model}` "
            "on the gateway host, or choose another with --ollama-model"
        )
