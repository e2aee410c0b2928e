"""Both real engines (the offline tiny.en, on the CPU) decode several utterances in one
model call, and give each what ``transcribe`` gives it alone."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.testing.loopback import load_clips
from tests.conftest import EngineCache

ENGINES = ["openai-whisper", "faster-whisper"]


@pytest.mark.parametrize("name", ENGINES)
def test_a_batch_gives_each_clip_what_transcribe_gives_it(engines: EngineCache, name: str) -> None:
    engine = engines.get(name)
    clips = load_clips()  # three sentences, then noise
    audios = [audio for _, audio in clips]
    batch = engine.transcribe_batch(audios, None)
    alone = [engine.transcribe(audio, None) for audio in audios]
    assert [t.text for t in batch] == [t.text for t in alone]
    assert all(t.text for t in batch[:3])
    assert batch[3].segments == ()  # Whisper's own no-speech rule drops the noise
    for together, single in zip(batch, alone, strict=True):
        assert len(together.segments) == len(single.segments)
        for a, b in zip(together.segments, single.segments, strict=True):
            assert a.text == b.text
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-3)
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-3)


@pytest.mark.parametrize("name", ENGINES)
def test_a_batch_keeps_order_and_answers_empty_audio_with_nothing(
    engines: EngineCache, name: str
) -> None:
    engine = engines.get(name)
    (_, first), (_, second), *_ = load_clips()
    empty = np.zeros(0, dtype=np.float32)
    result = engine.transcribe_batch([second, empty, first], "en")
    alone = [engine.transcribe(audio, "en") for audio in (second, first)]
    assert [t.text for t in result] == [alone[0].text, "", alone[1].text]
    assert engine.transcribe_batch([], "en") == []
