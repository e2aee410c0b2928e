"""Runs one shared ASR engine off the event loop, with bounded concurrency and backlog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from media import Float32Array
from media.asr.base import ASREngine, Transcription
from media.errors import ASRBusyError, ASRError

logger = logging.getLogger(__name__)


class ASRService:
    """``workers`` calls run at once (one is right for a CPU: Whisper already uses every
    core); at most ``max_pending`` wait behind them, beyond which a call fails at once
    rather than queueing speech nobody will wait for."""

    def __init__(
        self,
        engine: ASREngine,
        *,
        workers: int = 1,
        max_pending: int = 16,
        timeout_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr")
        self._max_pending = max_pending
        self._timeout_s = timeout_s
        self._pending = 0

    @property
    def pending(self) -> int:
        """Calls queued or running in the worker: a call whose caller gave up (a discarded
        early ASR, a timeout) still holds the worker until Whisper returns, so it counts."""
        return self._pending

    async def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        if self._pending >= self._max_pending:
            raise ASRBusyError(f"speech recogniser busy: {self._pending} utterances waiting")
        loop = asyncio.get_running_loop()
        work = self._executor.submit(self.engine.transcribe, audio, language)
        self._pending += 1
        # Counted down when the worker is done, not when this coroutine stops waiting.
        work.add_done_callback(lambda _: self._finished_from_worker(loop))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(work, loop=loop), self._timeout_s)
        except TimeoutError as exc:
            raise ASRError(f"transcription took longer than {self._timeout_s:g} s") from exc
        except ASRError:
            raise
        except Exception as exc:
            logger.exception("ASR engine %s failed", self.engine.name)
            raise ASRError(f"transcription failed: {type(exc).__name__}: {exc}") from exc

    def _finished_from_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has gone: nothing left to count
            loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        self._pending -= 1

    async def close(self) -> None:
        # A running Whisper call cannot be interrupted; waiting for it happens off the loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
