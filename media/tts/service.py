"""Runs one shared speech synthesiser off the event loop, chunk by chunk, bounded and timed.

Each executor call is made only when the consumer asks for the next chunk. That is the
simplest handoff that is correct: the bound is one call in flight per stream with no queue
or semaphore to get wrong; a slow consumer holds no worker thread (a worker blocked on a
full queue would stall every other session on a one-worker pool); and streams sharing the
pool take turns call by call. A call makes one chunk, or, for an engine whose chunks are
whole sentences, that chunk and the one after it: one chunk of read-ahead, held by the
stream, so that the end of a piece is known with its last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from media import Int16Array
from media.errors import TTSError, TTSUnavailable
from media.tts.base import TTSEngine

logger = logging.getLogger(__name__)

# How long close() waits for chunks in flight. An engine's own timeouts end a stalled
# request well before this; an engine that ignores them must not hang shutdown.
SHUTDOWN_GRACE_S = 10.0


class _Synthesis:
    """One text being spoken. Its generator is created, advanced and closed only in worker
    threads, one at a time; ``stopped`` is the cancel flag they check between chunks."""

    def __init__(self, engine: TTSEngine, text: str, voice: str | None) -> None:
        self._engine = engine
        self._text = text
        self._voice = voice
        self._chunks: Iterator[Int16Array] | None = None
        self._ahead: Int16Array | None = None  # the next chunk, made with the one before
        self._lock = threading.Lock()  # a generator must never run in two threads
        self.stopped = threading.Event()
        self.finished = False  # the generator is exhausted, failed or closed

    def take_ahead(self) -> Int16Array | None:
        """The chunk already made by the last call, if any: no worker needed."""
        chunk, self._ahead = self._ahead, None
        return chunk

    def next_chunk(self) -> Int16Array | None:
        """The next chunk, or None when there is none or the consumer has gone. Blocking.
        With whole-sentence chunks it also makes the one after (usually: learns there is
        none), so that the end of a piece is known now, not after another turn in the
        queue behind other sessions' synthesis."""
        with self._lock:
            if self.stopped.is_set() or self.finished:
                return None
            if self._chunks is None:  # made here: an engine may work before its first yield
                self._chunks = self._engine.synthesize(self._text, self._voice)
            chunk = self._advance()
            if chunk is not None and self._engine.chunks_are_sentences:
                self._ahead = self._advance()
            return chunk

    def _advance(self) -> Int16Array | None:
        assert self._chunks is not None
        try:
            return next(self._chunks)
        except StopIteration:
            self.finished = True
            return None
        except BaseException:
            self.finished = True
            raise

    def close(self) -> None:
        """Stop between chunks: waits for a chunk being made, then closes the generator
        (an HTTP engine drops its connection). Blocking; idempotent."""
        self.stopped.set()
        with self._lock:
            if not self.finished and isinstance(self._chunks, Generator):
                self._chunks.close()
            self.finished = True


class TTSService:
    """``workers`` chunks are made at once (one suits a CPU voice: ONNX Runtime already
    uses the cores); at most ``max_pending`` streams are open or winding down, beyond
    which a new one fails at once rather than speak a reply too late to matter."""

    def __init__(
        self,
        engine: TTSEngine,
        *,
        workers: int = 1,
        max_pending: int = 8,
        first_chunk_timeout_s: float = 10.0,
        chunk_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts")
        self._max_pending = max_pending
        self._first_chunk_timeout_s = first_chunk_timeout_s
        self._chunk_timeout_s = chunk_timeout_s
        # Streams whose generator is not closed yet: one the consumer left still holds a
        # worker until its chunk in flight is done, so it counts.
        self._live: set[_Synthesis] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._live)

    async def stream(self, text: str, voice: str | None = None) -> AsyncGenerator[Int16Array, None]:
        """``text`` spoken as int16 chunks at ``engine.sample_rate`` (in ``voice``, where the
        engine takes one per request). Leaving early
        (``break``, ``aclose()``, cancellation) stops the synthesis between chunks."""
        if self._closed:
            raise TTSUnavailable("speech synthesis has shut down")
        if len(self._live) >= self._max_pending:
            raise TTSUnavailable(f"speech synthesiser busy: {len(self._live)} replies waiting")
        if not text.strip():
            return
        loop = asyncio.get_running_loop()
        job = _Synthesis(self.engine, text, voice)
        self._live.add(job)
        limit_s = self._first_chunk_timeout_s
        try:
            while True:
                chunk = job.take_ahead()
                if chunk is None:
                    if job.finished and not self._closed:
                        return  # known in the call that made the last chunk
                    chunk = await self._next(job, loop, limit_s)
                if chunk is None:
                    if self._closed:
                        raise TTSUnavailable("speech synthesis stopped: shutting down")
                    return
                yield chunk
                limit_s = self._chunk_timeout_s
        finally:
            self._retire(job, loop)

    async def _next(
        self, job: _Synthesis, loop: asyncio.AbstractEventLoop, limit_s: float
    ) -> Int16Array | None:
        if self._closed:
            raise TTSUnavailable("speech synthesis stopped: shutting down")
        work = self._executor.submit(job.next_chunk)
        try:
            # On timeout or cancellation a call still queued is dropped; one running
            # finishes its chunk, and _retire closes the generator after it.
            return await asyncio.wait_for(asyncio.wrap_future(work, loop=loop), limit_s)
        except TimeoutError as exc:
            raise TTSUnavailable(
                f"{self.engine.name} speech synthesis gave no audio for {limit_s:g} s"
            ) from exc
        except TTSError:
            raise
        except Exception as exc:
            logger.exception("TTS engine %s failed", self.engine.name)
            raise TTSUnavailable(f"speech synthesis failed: {type(exc).__name__}: {exc}") from exc

    def _retire(self, job: _Synthesis, loop: asyncio.AbstractEventLoop) -> None:
        job.stopped.set()  # calls still queued return at once
        if job.finished:
            self._live.discard(job)
            return
        try:
            closing = self._executor.submit(job.close)
        except RuntimeError:  # shutting down: close() closes it
            self._live.discard(job)
            return

        def closed(_: Future[None]) -> None:  # in the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to count
                loop.call_soon_threadsafe(self._live.discard, job)

        closing.add_done_callback(closed)

    async def close(self) -> None:
        """Stops every stream between chunks and waits, off the loop, for chunks in
        flight (at most one per worker, bounded by the engine's own timeouts, and by
        :data:`SHUTDOWN_GRACE_S`: past that they are left to finish alone)."""
        self._closed = True
        jobs = list(self._live)
        for job in jobs:
            job.stopped.set()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._shutdown, jobs), SHUTDOWN_GRACE_S)
        except TimeoutError:
            logger.warning(
                "TTS engine %s still busy after %g s: closing without waiting for it",
                self.engine.name,
                SHUTDOWN_GRACE_S,
            )
        self._live.clear()

    def _shutdown(self, jobs: list[_Synthesis]) -> None:
        self._executor.shutdown(wait=True)  # queued calls see ``stopped`` and return
        for job in jobs:
            job.close()
