"""Turn-taking end to end: a real aiortc peer speaks into the app, with the offline tiny.en,
Silero and the Smart Turn model: a finished sentence ends its turn at the short pause, a
mid-sentence pause does not, live captions settle into the final. Then the parts that
fail: a missing or corrupt turn model, and one that fails while running."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.turn_policy import TurnDecision
from gateway.http.app import load_turn_judge
from gateway.ops.config import Config
from gateway.testing.loopback import load_clips
from media import Float32Array
from media.errors import TurnModelError
from media.smart_turn import find_turn_model
from scripts.make_test_speech import SPEECH_PEAK, load_voice, scale_to_peak, with_pause
from tests.conftest import GatewayFactory, connect
from tests.test_loopback_voice import overlap

needs_model = pytest.mark.skipif(
    find_turn_model(None) is None, reason="no Smart Turn model (make setup installs pipecat-ai)"
)
SILENCE = np.zeros(16_000, dtype=np.float32)


def paused_sentence(text: str, after_words: int, pause_s: float) -> Float32Array:
    audio = with_pause(text, after_words, pause_s, load_voice(alignments=True))
    lead = np.zeros(4_800, dtype=np.float32)
    return np.concatenate([lead, scale_to_peak(audio, SPEECH_PEAK), SILENCE, SILENCE])


@needs_model
async def test_a_finished_sentence_ends_at_the_short_pause(gateway: GatewayFactory) -> None:
    # Auto (the model and the text); a long silence limit, so that only a judgement can
    # end the turn early, however slow a loaded machine makes the early transcript.
    client = await gateway(vad_silence_ms=3000)
    peer, _ = await connect(client)
    text, audio = load_clips()[0]
    peer.mic.play(np.concatenate([audio, SILENCE, SILENCE, SILENCE, SILENCE]))

    stopped = await peer.next_event("speech.stopped")
    final = await peer.next_event("transcript.final")

    assert stopped["end_of_turn"] == "model"  # judged over, not waited out
    assert overlap(text, final["text"]) >= 0.85, final["text"]
    # Judged at the 200 ms pause once the early transcript was in (the endpoint includes
    # Silero's lag and the transcription), far from the 3 s limit.
    assert final["timings"]["endpoint_ms"] < 2000
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_turn_ends_total{end_of_turn="model"} 1.0' in metrics
    assert 'gateway_turn_decisions_total{by="model",decision="end"} 1.0' in metrics
    await peer.close()


@pytest.mark.parametrize(
    ("detection", "silence_ms", "turns"),
    [
        pytest.param("auto", 1000, 1, marks=needs_model),
        ("text", 1000, 1),
        ("fixed", 500, 2),  # today's fixed silence cuts the sentence in two
    ],
)
async def test_a_pause_mid_sentence(
    gateway: GatewayFactory, detection: str, silence_ms: int, turns: int
) -> None:
    client = await gateway(turn_detection=detection, vad_silence_ms=silence_ms)
    peer, _ = await connect(client)
    text = "I would like to know the weather in Paris."
    peer.mic.play(paused_sentence(text, 5, 0.6))

    finals = [await peer.next_event("transcript.final")]
    finals += [e for e in await peer.collect(2.5) if e["type"] == "transcript.final"]

    assert len(finals) == turns, finals
    heard = " ".join(f["text"] for f in finals)
    assert overlap(text, heard) >= 0.75, heard
    await peer.close()


async def test_live_captions_settle_into_the_final(gateway: GatewayFactory) -> None:
    client = await gateway(turn_detection="text", partial_interval_ms=600)
    peer, _ = await connect(client)
    clips = load_clips()
    # Two sentences run together: long enough for several captions.
    speech = np.concatenate([clips[1][1][:-3_200], clips[2][1][4_800:], SILENCE, SILENCE])
    peer.mic.play(speech)

    final = await peer.next_event("transcript.final")
    partials = [e for _, e in peer.received if e.get("type") == "transcript.partial"]

    assert partials, "no live caption before the final"
    assert {p["utterance_id"] for p in partials} == {final["utterance_id"]}
    stable = [p["stable_chars"] for p in partials]
    assert stable == sorted(stable)  # the settled part only grows
    for earlier, later in itertools.pairwise(partials):
        assert (
            later["text"][: earlier["stable_chars"]] == earlier["text"][: earlier["stable_chars"]]
        )
    for p in partials:
        assert 0 <= p["stable_chars"] <= len(p["text"])
    metrics = await (await client.get("/metrics")).text()
    assert f"gateway_partial_transcripts_total {float(len(partials))}" in metrics
    await peer.close()


async def test_no_captions_when_off(gateway: GatewayFactory) -> None:
    client = await gateway(turn_detection="text", partial_interval_ms=0)
    peer, _ = await connect(client)
    clips = load_clips()
    peer.mic.play(np.concatenate([clips[1][1], SILENCE, SILENCE]))
    await peer.next_event("transcript.final")
    kinds = [e.get("type") for _, e in peer.received]
    assert "transcript.partial" not in kinds
    await peer.close()


# --- what fails ---


def test_a_missing_turn_model_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TurnModelError, match="--turn-model"):
        load_turn_judge(Config(turn_model=tmp_path / "nope.onnx"))


def test_a_corrupt_turn_model_names_the_flag(tmp_path: Path) -> None:
    corrupt = tmp_path / "smart-turn.onnx"
    corrupt.write_bytes(b"not a model at all" * 100)
    with pytest.raises(TurnModelError, match="--turn-model"):
        load_turn_judge(Config(turn_model=corrupt))


def test_model_mode_without_a_model_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.http.app.find_turn_model", lambda explicit: None)
    with pytest.raises(TurnModelError, match="--turn-detection text"):
        load_turn_judge(Config(turn_detection="model"))
    assert load_turn_judge(Config(turn_detection="auto")).mode == "text"


class BrokenModel:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, audio: Float32Array) -> float:
        self.calls += 1
        raise RuntimeError("onnxruntime fell over")


async def test_a_model_that_fails_falls_back_to_the_text_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = BrokenModel()
    judge = TurnJudge("model", model)
    try:
        with caplog.at_level(logging.ERROR):
            assert await judge.probability(SILENCE) is None
            assert await judge.probability(SILENCE) is None
        assert model.calls == 1  # not asked again
        assert not judge.uses_model
        assert len([r for r in caplog.records if "turn model failed" in r.message]) == 1
        # The text decides from then on.
        assert judge.judge("What time is it?", None, None).decision is TurnDecision.END
        assert judge.judge("I would like to", None, None).decision is TurnDecision.WAIT
    finally:
        await judge.close()


def test_the_sessions_language_chooses_the_text_rules() -> None:
    """English words end nothing in German: "an" closes this sentence."""
    judge = load_turn_judge(Config(turn_detection="text"))
    german = "Ich komme morgen an."
    assert judge.judge(german, None, "de").decision is TurnDecision.END
    assert judge.judge(german, None, None).decision is TurnDecision.WAIT  # read as English


def test_fixed_and_text_modes_load_no_model() -> None:
    assert not load_turn_judge(Config(turn_detection="fixed")).decides
    text = load_turn_judge(Config(turn_detection="text"))
    assert text.decides
    assert not text.uses_model
