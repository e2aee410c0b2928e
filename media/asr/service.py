"""The process's one ASR scheduler: every transcription goes through one worker thread,
most urgent first, stale work dropped, and on a GPU several utterances per model call.

Callers ``await transcribe(audio, language, priority=...)``. Jobs wait in a priority queue
(priority, then arrival); one dispatcher task hands them to the engine in one worker thread
(Whisper already uses every core on a CPU; on a GPU one call at a time, batched, is best)::

    callers ──▶ queue (FINAL < EARLY < PARTIAL, then FIFO) ──▶ dispatcher ──▶ worker thread
                  │ cancelled: removed                           │ batch: same language,
                  │ deadline passed: ASRStaleError               │ FINAL/EARLY together,
                  │ full: ASRBusyError, or a PARTIAL evicted     │ PARTIAL together

Nothing here imports ``gateway``: what the gateway measures it learns through an
:class:`ASRObserver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from media import Float32Array
from media.asr.base import ASREngine, ModelInfo, Transcription, default_language
from media.errors import ASRBusyError, ASRError, ASRStaleError

logger = logging.getLogger(__name__)

GPU_BATCH_SIZE = 8
# How long close() waits for a running Whisper call. A call takes seconds; one that takes
# longer is hung (a stuck GPU, a remote file system), and shutdown must not hang with it.
SHUTDOWN_GRACE_S = 10.0


class Priority(enum.IntEnum):
    """Lower runs first."""

    FINAL = 0  # a turn has ended: someone waits for this
    EARLY = 1  # at a pause before the turn end is certain; usually becomes the final
    PARTIAL = 2  # a live caption while the person still talks: only on idle capacity


class Recogniser(Protocol):
    """What a session needs from speech recognition: :class:`ASRService` in this process,
    or :class:`media.asr.remote.RemoteASR`, an ASR server of the OpenAI API elsewhere."""

    @property
    def engine(self) -> ModelInfo: ...

    @property
    def idle(self) -> bool:
        """Nothing of ours is queued or running."""
        ...

    @property
    def urgent_pending(self) -> int:
        """FINAL and EARLY jobs queued or running."""
        ...

    async def transcribe(
        self,
        audio: Float32Array,
        language: str | None,
        *,
        priority: Priority = Priority.FINAL,
        deadline_s: float | None = None,
    ) -> Transcription:
        """As :meth:`ASRService.transcribe`; a recogniser that cannot be reached raises
        :class:`media.errors.ASRUnavailable`."""
        ...

    async def busy_seconds(self) -> float | None:
        """Seconds the recogniser has been at work since it started (None: unknown)."""
        ...

    async def close(self) -> None: ...


class ASRObserver(Protocol):
    """What the scheduler reports (the gateway implements it with metrics). Called on the
    event loop; it must not block."""

    def job_started(self, priority: Priority, waited_s: float) -> None:
        """A job reached the engine after ``waited_s`` in the queue."""
        ...

    def batch_done(self, size: int, seconds: float) -> None:
        """One engine call for ``size`` jobs returned (or failed) after ``seconds``."""
        ...


@dataclass(eq=False)
class _Job:
    audio: Float32Array
    language: str | None  # as the caller asked
    key: str | None  # the language the engine will use: what a batch shares
    priority: Priority
    seq: int  # arrival order
    submitted: float  # loop time
    future: asyncio.Future[Transcription]
    expiry: asyncio.TimerHandle | None = None  # the deadline's timer

    @property
    def order(self) -> tuple[int, int]:
        return (self.priority, self.seq)


class ASRService:
    """Runs one shared engine off the event loop, one call at a time.

    ``max_pending`` bounds the jobs queued or running: beyond it a call fails at once with
    :class:`ASRBusyError` rather than queue speech nobody will wait for, except that a FINAL
    or EARLY job takes the place of the newest queued PARTIAL one (which fails with
    :class:`ASRStaleError`). ``batch_size`` (None: 8 on CUDA, else 1, since on a CPU one
    utterance at a time is faster) is how many waiting jobs of one language and class
    (FINAL/EARLY, or PARTIAL) one engine call may take; with 1, each job is one
    ``engine.transcribe`` call.
    """

    def __init__(
        self,
        engine: ASREngine,
        *,
        max_pending: int = 16,
        timeout_s: float = 30.0,
        batch_size: int | None = None,
        observer: ASRObserver | None = None,
    ) -> None:
        if batch_size is None:
            batch_size = GPU_BATCH_SIZE if engine.device == "cuda" else 1
        if batch_size < 1 or max_pending < 1:
            raise ValueError(f"batch_size {batch_size} and max_pending {max_pending}: need >= 1")
        self.engine = engine
        self.batch_size = batch_size
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._max_pending = max_pending
        self._timeout_s = timeout_s
        self._queue: list[_Job] = []  # small (max_pending): a scan beats a heap's upkeep
        self._running: list[_Job] = []  # in the worker now (one batch at most)
        self._arrivals = 0
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False
        self.busy_s = 0.0  # seconds the engine has been at work, all calls together

    @property
    def pending(self) -> int:
        """Jobs queued or running: a running call whose caller gave up (a discarded early
        ASR, a timeout) still holds the worker until Whisper returns, so it counts."""
        return len(self._queue) + len(self._running)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker (not those running)."""
        return len(self._queue)

    @property
    def urgent_pending(self) -> int:
        """FINAL and EARLY jobs queued or running: work that captions never delay (a
        running caption holds the worker for one call at most)."""
        return sum(1 for j in (*self._queue, *self._running) if j.priority < Priority.PARTIAL)

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return self.pending == 0

    def start(self) -> None:
        """Starts the dispatcher (``transcribe`` also does, on first use). Needs a running
        event loop; the service then belongs to that loop."""
        if self._closed:
            raise ASRError("speech recogniser closed")
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="asr-dispatcher"
            )
            self._dispatcher.add_done_callback(_log_dispatcher_end)

    async def transcribe(
        self,
        audio: Float32Array,
        language: str | None,
        *,
        priority: Priority = Priority.FINAL,
        deadline_s: float | None = None,
    ) -> Transcription:
        """The transcription of ``audio`` (16 kHz mono, at most 30 s).

        Raises :class:`ASRBusyError` at once when ``max_pending`` jobs are queued or
        running; :class:`ASRStaleError` when the job has not started ``deadline_s`` seconds
        after this call, or a more urgent job took its place; :class:`ASRError` when the
        whole call (queue time included) takes longer than ``timeout_s``, or the engine
        fails. Cancelling the caller removes a job that has not started.
        """
        self.start()
        loop = asyncio.get_running_loop()
        if self.pending >= self._max_pending:
            self._make_room(priority)
        self._arrivals += 1
        job = _Job(
            audio,
            language,
            default_language(self.engine.languages, language),
            priority,
            self._arrivals,
            loop.time(),
            loop.create_future(),
        )
        if deadline_s is not None:
            job.expiry = loop.call_later(deadline_s, self._expire, job, deadline_s)
        # Whatever ends the wait (the caller cancelled, the timeout), a queued job goes.
        job.future.add_done_callback(lambda _: self._forget(job))
        self._queue.append(job)
        self._wakeup.set()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await job.future
        except TimeoutError as exc:
            raise ASRError(f"transcription took longer than {self._timeout_s:g} s") from exc

    def _make_room(self, priority: Priority) -> None:
        # A job whose caller just went is removed by a callback not yet run: not a reason.
        self._queue = [j for j in self._queue if not j.future.done()]
        if self.pending < self._max_pending:
            return
        partials = [j for j in self._queue if j.priority is Priority.PARTIAL]
        if priority is Priority.PARTIAL or not partials:
            raise ASRBusyError(
                f"speech recogniser busy: {self.pending} utterances waiting or running"
            )
        evicted = max(partials, key=lambda j: j.seq)
        self._queue.remove(evicted)
        _fail(evicted, ASRStaleError(f"caption dropped for a {priority.name} transcription"))

    def _expire(self, job: _Job, deadline_s: float) -> None:
        if job in self._queue:
            self._queue.remove(job)
            _fail(job, ASRStaleError(f"not started within its deadline of {deadline_s:g} s"))

    def _forget(self, job: _Job) -> None:
        if job.expiry is not None:
            job.expiry.cancel()
        if job in self._queue:
            self._queue.remove(job)

    def _take(self) -> list[_Job]:
        """The next jobs for the engine, removed from the queue: the most urgent, and with
        batching, others of its language and class in the same order."""
        waiting = [j for j in self._queue if not j.future.done()]
        if not waiting:
            return []
        head = min(waiting, key=lambda j: j.order)
        if self.batch_size == 1:
            batch = [head]
        else:
            partial = head.priority is Priority.PARTIAL
            batch = sorted(
                (
                    j
                    for j in waiting
                    if j.key == head.key and (j.priority is Priority.PARTIAL) == partial
                ),
                key=lambda j: j.order,
            )[: self.batch_size]
        for job in batch:
            self._queue.remove(job)
            if job.expiry is not None:
                job.expiry.cancel()
        return batch

    async def _dispatch(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        observer = self._observer
        for job in batch:
            if observer is not None:
                with _reported(observer):
                    observer.job_started(job.priority, now - job.submitted)
        audios = [j.audio for j in batch]
        # One job: the caller's own language, as before batching; a batch shares its key.
        language = batch[0].language if len(batch) == 1 else batch[0].key
        self._running = batch
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._call, audios, language)
        except asyncio.CancelledError:  # closing: the worker finishes alone
            for job in batch:
                _fail(job, ASRError("speech recogniser closed while transcribing"))
            raise
        except ASRError as exc:
            for job in batch:
                _fail(job, _copy(exc))
        except Exception as exc:
            logger.exception("ASR engine %s failed on %d utterances", self.engine.name, len(batch))
            for job in batch:
                failure = ASRError(f"transcription failed: {type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                _fail(job, failure)
        else:
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():  # its caller may have gone
                    job.future.set_result(result)
        finally:
            self._running = []
            self.busy_s += time.perf_counter() - started
            if observer is not None:
                with _reported(observer):
                    observer.batch_done(len(batch), time.perf_counter() - started)

    def _call(self, audios: Sequence[Float32Array], language: str | None) -> list[Transcription]:
        """In the worker thread."""
        if len(audios) == 1:
            return [self.engine.transcribe(audios[0], language)]
        results = self.engine.transcribe_batch(audios, language)
        if len(results) != len(audios):
            raise ASRError(
                f"engine {self.engine.name} returned {len(results)} transcriptions "
                f"for {len(audios)} utterances"
            )
        return results

    async def busy_seconds(self) -> float | None:
        return self.busy_s

    async def close(self) -> None:
        """Fails the queued jobs, stops the dispatcher (a running call's callers get
        :class:`ASRError`), then waits, off the loop, up to :data:`SHUTDOWN_GRACE_S` for a
        running Whisper call to return: it cannot be interrupted. Past that it is left to
        finish alone."""
        self._closed = True
        for job in list(self._queue):
            self._queue.remove(job)
            _fail(job, ASRError("speech recogniser closed"))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        shutdown = asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        try:
            await asyncio.wait_for(shutdown, SHUTDOWN_GRACE_S)
        except TimeoutError:
            logger.warning(
                "ASR engine %s still busy after %g s: closing without waiting for it",
                self.engine.name,
                SHUTDOWN_GRACE_S,
            )


@contextlib.contextmanager
def _reported(observer: ASRObserver) -> Iterator[None]:
    """Metrics must never stop speech recognition: an observer's failure is only logged."""
    try:
        yield
    except Exception:
        logger.exception("ASR observer %s failed", type(observer).__name__)


def _fail(job: _Job, exc: ASRError) -> None:
    if not job.future.done():
        job.future.set_exception(exc)


def _copy(exc: ASRError) -> ASRError:
    """One exception per caller: a raised exception's traceback belongs to one task."""
    copy = type(exc)(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy


def _log_dispatcher_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("ASR dispatcher stopped", exc_info=task.exception())
