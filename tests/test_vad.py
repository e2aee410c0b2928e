"""The VAD batcher gives each stream exactly what it would get alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.testing.loopback import load_clips
from media.vad import CHUNK_SAMPLES, SileroModel, VadBatcher


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def chunks_of(audio: np.ndarray) -> list[np.ndarray]:
    whole = len(audio) // CHUNK_SAMPLES * CHUNK_SAMPLES
    return [audio[i : i + CHUNK_SAMPLES] for i in range(0, whole, CHUNK_SAMPLES)]


async def test_batched_streams_match_each_stream_alone(model: SileroModel) -> None:
    clips = [chunks_of(audio) for _, audio in load_clips()[:3]]
    alone = []
    for chunks in clips:
        stream = model.stream()
        alone.append([stream.probability(c) for c in chunks])

    batcher = VadBatcher(model, window_s=0.002)

    async def run(chunks: list[np.ndarray]) -> list[float]:
        stream = batcher.stream()
        return [await batcher.probability(stream, c) for c in chunks]

    batched = await asyncio.gather(*(run(chunks) for chunks in clips))

    for expected, got in zip(alone, batched, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert max(max(p) for p in batched) > 0.9  # it heard the speech


async def test_a_full_batch_runs_without_waiting(model: SileroModel) -> None:
    batcher = VadBatcher(model, window_s=60.0, max_batch=3)
    streams = [batcher.stream() for _ in range(3)]
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
    probs = await asyncio.wait_for(
        asyncio.gather(*(batcher.probability(s, silence) for s in streams)), 1.0
    )
    assert all(p < 0.1 for p in probs)


async def test_a_cancelled_waiter_does_not_break_the_others(model: SileroModel) -> None:
    batcher = VadBatcher(model, window_s=0.01)
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.float32)
    gone = asyncio.ensure_future(batcher.probability(batcher.stream(), silence))
    kept = asyncio.ensure_future(batcher.probability(batcher.stream(), silence))
    await asyncio.sleep(0)
    gone.cancel()
    assert await asyncio.wait_for(kept, 1.0) < 0.1
    assert gone.cancelled()


async def test_close_cancels_waiters(model: SileroModel) -> None:
    batcher = VadBatcher(model, window_s=60.0)
    waiting = asyncio.ensure_future(
        batcher.probability(batcher.stream(), np.zeros(CHUNK_SAMPLES, dtype=np.float32))
    )
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
