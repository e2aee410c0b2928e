"""The ASR service's bounds, with an engine that blocks until the test lets it go (the
engine interface is the seam; the real engines are covered by the loopback tests)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gateway.errors import ASRError
from media import Float32Array
from media.asr.base import Segment, Transcription
from media.asr.service import ASRService
from media.errors import ASRBusyError


class GatedEngine:
    name = "gated"
    model = "none"
    device = "cpu"
    languages = frozenset({"en"})

    def __init__(self) -> None:
        self.release = threading.Event()

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        if not self.release.wait(10):
            raise RuntimeError("never released")
        return Transcription((Segment(f"{len(audio)} samples", -0.1, 0.0),))


AUDIO = np.zeros(16_000, dtype=np.float32)


async def test_a_call_abandoned_by_its_caller_still_counts_until_the_worker_is_done() -> None:
    engine = GatedEngine()
    service = ASRService(engine)
    waiting = asyncio.ensure_future(service.transcribe(AUDIO, None))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.sleep(0.05)
    assert service.pending == 1  # Whisper is still busy with it
    engine.release.set()
    for _ in range(100):
        if service.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert service.pending == 0
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
