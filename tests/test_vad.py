"""The VAD batcher gives each stream exactly what it would get alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.testing.loopback import load_clips
from media.errors import MediaError
from media.vad import (
    CHUNK_SAMPLES,
    SETTLE_CHUNKS,
    SILENT_DBFS,
    SileroModel,
    SileroStream,
    VadBatcher,
)


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def quiet(dbfs: float = -50.0, seed: int = 0) -> np.ndarray:
    """A chunk of white noise at ``dbfs`` RMS: no speech, but loud enough for the model."""
    noise = np.random.default_rng(seed).standard_normal(CHUNK_SAMPLES)
    return (noise * 10 ** (dbfs / 20)).astype(np.float32)


class CountingModel(SileroModel):
    """The real model, counting the rows it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def run(self, chunks: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.rows += len(chunks)
        return super().run(chunks, state)


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
    probs = await asyncio.wait_for(
        asyncio.gather(*(batcher.probability(s, quiet()) for s in streams)), 1.0
    )
    assert all(p < 0.1 for p in probs)


async def test_a_cancelled_waiter_does_not_break_the_others(model: SileroModel) -> None:
    batcher = VadBatcher(model, window_s=0.01)
    gone = asyncio.ensure_future(batcher.probability(batcher.stream(), quiet()))
    kept = asyncio.ensure_future(batcher.probability(batcher.stream(), quiet()))
    await asyncio.sleep(0)
    gone.cancel()
    assert await asyncio.wait_for(kept, 1.0) < 0.1
    assert gone.cancelled()


class FailingModel(SileroModel):
    def run(self, chunks: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("onnxruntime gave up")


async def test_a_failed_batch_gives_each_stream_its_own_exception() -> None:
    batcher = VadBatcher(FailingModel(), window_s=0.01)
    waiting = [batcher.probability(batcher.stream(), quiet()) for _ in range(2)]
    first, second = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(first, MediaError)
    assert isinstance(second, MediaError)
    assert first is not second  # each task raises, and so writes the traceback of, its own
    assert "onnxruntime gave up" in str(first)
    assert isinstance(first.__cause__, RuntimeError)
    assert first.__cause__ is second.__cause__


async def test_close_cancels_waiters(model: SileroModel) -> None:
    batcher = VadBatcher(model, window_s=60.0)
    waiting = asyncio.ensure_future(batcher.probability(batcher.stream(), quiet()))
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- chunks far below speech are not shown to the model, once the silence has settled ---


def zeros() -> np.ndarray:
    return np.zeros(CHUNK_SAMPLES, np.float32)


def spoken() -> list[np.ndarray]:
    """The first clip's chunks from its first audible one to its last (its own leading and
    trailing silence would be skipped)."""
    chunks = chunks_of(load_clips()[0][1])
    audible = [i for i, c in enumerate(chunks) if np.sqrt(np.mean(c**2)) > 0.01]
    return chunks[audible[0] : audible[-1] + 1]


async def test_a_settled_silence_gets_zero_without_the_model() -> None:
    model = CountingModel()
    batcher = VadBatcher(model, window_s=0.001)
    batched, alone = batcher.stream(), model.stream()
    below = [zeros(), quiet(SILENT_DBFS - 3)] * 6
    got = [await batcher.probability(batched, c) for c in below]
    assert [alone.probability(c) for c in below] == got
    # The first SETTLE_CHUNKS still go to the model (each stream's), the rest are 0.
    assert model.rows == 2 * SETTLE_CHUNKS
    assert got[SETTLE_CHUNKS:] == [0.0] * (len(below) - SETTLE_CHUNKS)
    # Sound above the level goes to the model again at once.
    above = quiet(SILENT_DBFS + 3)
    await batcher.probability(batched, above)
    alone.probability(above)
    assert model.rows == 2 * SETTLE_CHUNKS + 2


def test_speech_after_a_skipped_silence_is_judged_as_after_a_short_one(
    model: SileroModel,
) -> None:
    """The state the model had when the silence settled is what the next speech meets:
    skipping a minute of silence changes nothing against SETTLE_CHUNKS of it."""
    speech = spoken()

    def unskipped(chunks: list[np.ndarray]) -> list[float]:
        stream = model.stream()
        out = []
        for chunk in chunks:
            probs, state = model.run(stream.row(chunk).reshape(1, -1), stream.state)
            stream.advance(chunk, state)
            out.append(float(probs[0]))
        return out

    expected = unskipped([*speech, *[zeros()] * SETTLE_CHUNKS, *speech])[-len(speech) :]
    stream = model.stream()
    for chunk in [*speech, *[zeros()] * (SETTLE_CHUNKS + 1800)]:  # a minute of silence
        stream.probability(chunk)
    again = [stream.probability(c) for c in speech]
    np.testing.assert_allclose(again, expected, atol=1e-5)
    assert max(again) > 0.9


def test_quiet_moments_inside_speech_still_go_to_the_model(model: SileroModel) -> None:
    """A stop inside a word or a word's quiet end dips below the level for a chunk or two:
    Silero must still see them, as an unskipped stream does."""
    speech = spoken()
    gappy = [*speech[:20], zeros(), zeros(), *speech[20:]]
    counting = CountingModel()
    stream = counting.stream()
    [stream.probability(c) for c in gappy]
    assert counting.rows == len(gappy)


def test_skip_rejects_a_chunk_of_the_wrong_size(model: SileroModel) -> None:
    with pytest.raises(ValueError, match="Silero needs 512 samples"):
        SileroStream(model).skip(np.zeros(480, np.float32))
