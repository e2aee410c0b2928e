"""The ASR scheduler, with an engine that blocks until the test lets it go and records
every call (the engine interface is the seam; the real engines' batches are covered by
test_asr_batch, and the real pipeline by the loopback tests).

Each job's audio has its own length, so a call's record says which jobs it carried."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gateway.errors import ASRError
from media import Float32Array
from media.asr import service as service_module
from media.asr.base import Segment, Transcription
from media.asr.service import ASRService, Priority
from media.errors import ASRBusyError, ASRStaleError


class GatedEngine:
    name = "gated"
    model = "none"
    device = "cpu"
    languages = frozenset({"en"})

    def __init__(self) -> None:
        self.release = threading.Event()
        # One entry per engine call: "one" or "batch", the jobs' lengths, the language.
        self.calls: list[tuple[str, list[int], str | None]] = []
        self.failure: Exception | None = None

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        self.calls.append(("one", [len(audio)], language))
        return self._result(audio)

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        self.calls.append(("batch", [len(a) for a in audios], language))
        return [self._result(a) for a in audios]

    def _result(self, audio: Float32Array) -> Transcription:
        if not self.release.wait(10):
            raise RuntimeError("never released")
        if self.failure is not None:
            raise self.failure
        return Transcription((Segment(f"{len(audio)} samples", -0.1, 0.0),))

    def lengths(self) -> list[int]:
        return [n for _, lengths, _ in self.calls for n in lengths]


AUDIO = np.zeros(16_000, dtype=np.float32)
BLOCKER = 1_000  # the length of the job that holds the worker while the test queues more


def audio(samples: int) -> Float32Array:
    return np.zeros(samples, dtype=np.float32)


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def busy(service: ASRService, engine: GatedEngine) -> asyncio.Task[Transcription]:
    """A job that is running in the worker (held there until ``engine.release``)."""
    task = asyncio.create_task(service.transcribe(audio(BLOCKER), None))
    await until(lambda: bool(engine.calls))
    return task


def submit(
    service: ASRService,
    samples: int,
    priority: Priority = Priority.FINAL,
    language: str | None = None,
    deadline_s: float | None = None,
) -> asyncio.Task[Transcription]:
    return asyncio.create_task(
        service.transcribe(audio(samples), language, priority=priority, deadline_s=deadline_s)
    )


async def test_a_call_abandoned_by_its_caller_still_counts_until_the_worker_is_done() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    waiting = asyncio.ensure_future(service.transcribe(AUDIO, None))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.sleep(0.05)
    assert service.pending == 1  # Whisper is still busy with it
    assert service.queue_depth == 0
    assert not service.idle
    engine.release.set()
    await until(lambda: service.pending == 0)
    assert service.idle
    await service.close()


async def test_backlog_beyond_the_limit_is_refused_at_once() -> None:
    engine = GatedEngine()
    service = ASRService(engine, max_pending=2)
    calls = [asyncio.ensure_future(service.transcribe(AUDIO, None)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ASRBusyError):
        await service.transcribe(AUDIO, None)
    engine.release.set()
    results = await asyncio.gather(*calls)
    assert [r.text for r in results] == ["16000 samples", "16000 samples"]
    await service.close()


async def test_a_slow_call_times_out_with_a_readable_error() -> None:
    engine = GatedEngine()
    service = ASRService(engine, timeout_s=0.1)
    with pytest.raises(ASRError, match=r"longer than 0\.1 s"):
        await service.transcribe(AUDIO, None)
    engine.release.set()
    await service.close()


async def test_the_most_urgent_waiting_job_runs_next_whatever_its_arrival() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    blocker = await busy(service, engine)
    jobs = [
        submit(service, 2_000, Priority.PARTIAL),
        submit(service, 3_000, Priority.EARLY),
        submit(service, 4_000, Priority.FINAL),
        submit(service, 5_000, Priority.EARLY),
    ]
    await until(lambda: service.queue_depth == 4)
    assert service.pending == 5
    assert service.urgent_pending == 4  # all but the caption
    engine.release.set()
    await asyncio.gather(blocker, *jobs)
    assert engine.lengths() == [BLOCKER, 4_000, 3_000, 5_000, 2_000]
    assert all(kind == "one" for kind, _, _ in engine.calls)  # batch_size 1 on a CPU
    await service.close()


async def test_a_cancelled_caller_takes_its_queued_job_with_it() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    blocker = await busy(service, engine)
    discarded = submit(service, 2_000, Priority.EARLY)
    await until(lambda: service.queue_depth == 1)
    discarded.cancel()
    await until(lambda: service.queue_depth == 0)
    assert service.pending == 1
    engine.release.set()
    await blocker
    await until(lambda: service.idle)
    assert engine.lengths() == [BLOCKER]  # the engine never saw it
    await service.close()


async def test_a_job_not_started_by_its_deadline_is_stale_and_never_runs() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    blocker = await busy(service, engine)
    with pytest.raises(ASRStaleError, match=r"deadline of 0\.05 s"):
        await service.transcribe(audio(2_000), None, priority=Priority.PARTIAL, deadline_s=0.05)
    assert service.pending == 1  # only the blocker
    engine.release.set()
    await blocker
    fresh = await service.transcribe(audio(3_000), None, deadline_s=1.0)  # started in time
    assert fresh.text == "3000 samples"
    assert engine.lengths() == [BLOCKER, 3_000]
    await service.close()


async def test_when_full_a_final_job_evicts_the_newest_waiting_caption() -> None:
    engine = GatedEngine()
    service = ASRService(engine, max_pending=3)
    blocker = await busy(service, engine)
    older = submit(service, 2_000, Priority.PARTIAL)
    newer = submit(service, 3_000, Priority.PARTIAL)
    await until(lambda: service.pending == 3)
    with pytest.raises(ASRBusyError):  # a caption never evicts anything
        await service.transcribe(audio(4_000), None, priority=Priority.PARTIAL)
    final = submit(service, 5_000, Priority.FINAL)
    with pytest.raises(ASRStaleError, match="FINAL"):
        await newer
    assert service.pending == 3
    early = submit(service, 6_000, Priority.EARLY)
    with pytest.raises(ASRStaleError, match="EARLY"):
        await older
    with pytest.raises(ASRBusyError):  # no caption left to evict
        await service.transcribe(audio(7_000), None, priority=Priority.FINAL)
    engine.release.set()
    await asyncio.gather(blocker, final, early)
    assert engine.lengths() == [BLOCKER, 5_000, 6_000]
    await service.close()


async def test_waiting_jobs_of_one_language_and_class_share_an_engine_call() -> None:
    engine = GatedEngine()
    service = ASRService(engine, batch_size=4)
    blocker = await busy(service, engine)
    jobs = {
        2_000: submit(service, 2_000, Priority.FINAL, "en"),
        2_100: submit(service, 2_100, Priority.EARLY, "en"),
        2_200: submit(service, 2_200, Priority.PARTIAL, "en"),
        2_300: submit(service, 2_300, Priority.PARTIAL),  # None is "en" on this model
        2_400: submit(service, 2_400, Priority.FINAL, "de"),
        2_500: submit(service, 2_500, Priority.FINAL),
        2_600: submit(service, 2_600, Priority.FINAL, "en"),
        2_700: submit(service, 2_700, Priority.EARLY, "en"),
    }
    await until(lambda: service.queue_depth == 8)
    engine.release.set()
    results = await asyncio.gather(blocker, *jobs.values())
    assert [r.text for r in results[1:]] == [f"{n} samples" for n in jobs]  # each its own
    assert engine.calls == [
        ("one", [BLOCKER], None),
        # FINAL first, then EARLY, arrival order within each; at most four.
        ("batch", [2_000, 2_500, 2_600, 2_100], "en"),
        ("one", [2_400], "de"),  # the next most urgent: its language alone
        ("one", [2_700], "en"),
        ("batch", [2_200, 2_300], "en"),  # captions batch only with captions
    ]
    await service.close()


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    engine = GatedEngine()
    service = ASRService(engine, batch_size=4)
    blocker = await busy(service, engine)
    jobs = [submit(service, n) for n in (2_000, 3_000)]
    await until(lambda: service.queue_depth == 2)
    engine.failure = RuntimeError("CUDA out of memory")
    engine.release.set()
    outcomes = await asyncio.gather(blocker, *jobs, return_exceptions=True)
    assert all(isinstance(o, ASRError) for o in outcomes)
    assert "RuntimeError: CUDA out of memory" in str(outcomes[1])
    assert outcomes[1] is not outcomes[2]  # one exception per caller
    assert engine.calls[1] == ("batch", [2_000, 3_000], "en")  # None is "en" here
    engine.failure = None
    assert (await service.transcribe(AUDIO, None)).text == "16000 samples"  # it goes on
    await service.close()


async def test_close_fails_queued_and_running_callers_and_waits_for_the_worker() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    blocker = await busy(service, engine)
    queued = submit(service, 2_000)
    await until(lambda: service.queue_depth == 1)
    closing = asyncio.create_task(service.close())
    with pytest.raises(ASRError, match="closed"):
        await queued
    with pytest.raises(ASRError, match="closed while transcribing"):
        await blocker
    await asyncio.sleep(0.05)
    assert not closing.done()  # Whisper cannot be interrupted: close waits for it
    engine.release.set()
    await asyncio.wait_for(closing, 5)
    assert engine.lengths() == [BLOCKER]
    with pytest.raises(ASRError, match="closed"):
        await service.transcribe(AUDIO, None)


async def test_close_stops_waiting_for_a_hung_worker_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "SHUTDOWN_GRACE_S", 0.05)
    engine = GatedEngine()
    service = ASRService(engine)
    blocker = await busy(service, engine)
    try:
        with caplog.at_level(logging.WARNING, logger="media.asr.service"):
            await asyncio.wait_for(service.close(), 2)  # not the engine's 10 s
        assert "still busy after 0.05 s" in caplog.text
        with pytest.raises(ASRError, match="closed while transcribing"):
            await blocker
    finally:
        engine.release.set()  # the worker thread ends before the test does


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[Priority, float]] = []
        self.batches: list[tuple[int, float]] = []

    def job_started(self, priority: Priority, waited_s: float) -> None:
        self.started.append((priority, waited_s))

    def batch_done(self, size: int, seconds: float) -> None:
        self.batches.append((size, seconds))


async def test_the_observer_hears_of_every_start_and_every_engine_call() -> None:
    engine = GatedEngine()
    observer = Recorder()
    service = ASRService(engine, batch_size=2, observer=observer)
    blocker = await busy(service, engine)
    jobs = [submit(service, 2_000, Priority.EARLY), submit(service, 3_000, Priority.FINAL)]
    await until(lambda: service.queue_depth == 2)
    await asyncio.sleep(0.05)
    engine.release.set()
    await asyncio.gather(blocker, *jobs)
    await until(lambda: len(observer.batches) == 2)
    assert [p for p, _ in observer.started] == [Priority.FINAL, Priority.FINAL, Priority.EARLY]
    assert observer.started[0][1] < 0.05 <= min(w for _, w in observer.started[1:])
    assert [size for size, _ in observer.batches] == [1, 2]
    assert observer.batches[0][1] >= 0.05  # the blocker held the worker at least that long
    await service.close()


def test_batching_is_on_by_default_only_on_a_gpu() -> None:
    engine = GatedEngine()
    assert ASRService(engine).batch_size == 1
    engine.device = "cuda"
    assert ASRService(engine).batch_size == 8
    assert ASRService(engine, batch_size=1).batch_size == 1
    with pytest.raises(ValueError, match="batch_size 0"):
        ASRService(engine, batch_size=0)


class Broken:
    def job_started(self, priority: Priority, waited_s: float) -> None:
        raise RuntimeError("metrics down")

    def batch_done(self, size: int, seconds: float) -> None:
        raise RuntimeError("metrics down")


async def test_a_failing_observer_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    engine = GatedEngine()
    engine.release.set()
    service = ASRService(engine, observer=Broken())
    assert (await service.transcribe(AUDIO, None)).text == "16000 samples"
    assert "ASR observer Broken failed" in caplog.text
    await service.close()
