"""Smart Turn v3 with the real model from the installed pipecat-ai wheel: features identical
to pipecat's own extractor, finished sentences heard as finished and cut-off ones as not,
and unusable model files reported against --turn-model."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from gateway.testing.loopback import load_clips
from media import Float32Array
from media.errors import TurnModelError
from media.smart_turn import (
    COMPLETE_THRESHOLD,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    SmartTurn,
    find_turn_model,
    hann_window,
    last_window,
    mel_filterbank,
    whisper_log_mel,
)
from media.vad import silero_model_path
from scripts.make_test_speech import load_voice, scale_to_peak, synthesize, with_silence

# The endpointer offers a turn for judging 200 ms into a pause (EndpointerSettings.pause_ms).
PAUSE = np.zeros(round(0.2 * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def model_path() -> Path:
    path = find_turn_model(None)
    if path is None:
        pytest.skip("pipecat-ai is not installed: no Smart Turn model to test with")
    return path


@pytest.fixture(scope="module")
def model(model_path: Path) -> SmartTurn:
    return SmartTurn(model_path)


@pytest.fixture(scope="module")
def voice() -> Any:
    return load_voice()


def spoken(text: str, voice: Any) -> Float32Array:
    """``text`` as the committed clips are made: 0.3 s of silence, speech, 0.2 s of silence."""
    return with_silence(scale_to_peak(synthesize(text, voice), 0.7))


def one_line_naming_the_flag(error: TurnModelError, path: Path) -> None:
    message = str(error)
    assert "--turn-model" in message, message
    assert str(path) in message, message
    assert "\n" not in message, message


# -- features --------------------------------------------------------------------------------


def pipecat_features(model_path: Path) -> Callable[..., np.ndarray]:
    """pipecat's vendored WhisperFeatureExtractor, loaded by path: importing the pipecat
    package itself needs dependencies the gateway does not install."""
    source = model_path.parents[1] / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", source)
    assert spec is not None, source
    assert spec.loader is not None, source
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[..., np.ndarray], module.compute_whisper_log_mel_features)


def test_features_match_pipecats_extractor(model_path: Path) -> None:
    reference = pipecat_features(model_path)
    filters, window = mel_filterbank(), hann_window()
    for _text, audio in load_clips():
        ours = whisper_log_mel(audio, filters, window)
        theirs = reference(last_window(audio), do_normalize=True)
        assert ours.shape == theirs.shape == (80, 800)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours.min() < 0 < ours.max()  # a real spectrum, not a constant


def test_filterbank_is_whispers() -> None:
    spec = importlib.util.find_spec("whisper")  # its assets only: importing it loads torch
    assert spec is not None
    assert spec.submodule_search_locations
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets" / "mel_filters.npz"
    with np.load(assets) as stored:
        whisper_filters = stored["mel_80"]
    np.testing.assert_allclose(mel_filterbank(), whisper_filters, rtol=0, atol=1e-7)


def test_last_window_keeps_the_end_and_pads_the_start() -> None:
    short = np.arange(1, 11, dtype=np.float32)
    padded = last_window(short)
    assert padded.shape == (WINDOW_SAMPLES,)
    assert not padded[:-10].any()
    np.testing.assert_array_equal(padded[-10:], short)
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    np.testing.assert_array_equal(last_window(long), long[5:])
    with pytest.raises(ValueError, match="mono"):
        last_window(np.zeros((2, 100), dtype=np.float32))


# -- predictions -----------------------------------------------------------------------------


def test_finished_sentences_score_as_complete(model: SmartTurn) -> None:
    for text, audio in load_clips():
        if text:  # each clip ends with 0.2 s of silence, like a pause the endpointer offers
            assert model.predict(audio) > COMPLETE_THRESHOLD, text


@pytest.mark.parametrize(
    ("sentence", "cut_after"),
    [
        ("I would like to know the weather in Paris.", "I would like to know the"),
        ("What is the weather like in Paris today?", "What is the"),
    ],
)
def test_a_sentence_cut_off_mid_phrase_scores_as_incomplete(
    model: SmartTurn, voice: Any, sentence: str, cut_after: str
) -> None:
    whole = spoken(sentence, voice)
    # Where the words up to ``cut_after`` end: as long as they take when spoken alone. Those
    # alone would not do, since Piper ends any text with a final, falling intonation.
    prefix = with_silence(scale_to_peak(synthesize(cut_after, voice), 0.7), trail_s=0.0)
    cut = np.concatenate([whole[: prefix.size], PAUSE])

    complete, incomplete = model.predict(whole), model.predict(cut)
    assert complete > COMPLETE_THRESHOLD, complete
    assert incomplete < COMPLETE_THRESHOLD, incomplete
    assert complete - incomplete > 0.5, (complete, incomplete)


def test_short_and_long_audio(model: SmartTurn) -> None:
    clips = [audio for text, audio in load_clips() if text]
    half_second = clips[0][: SAMPLE_RATE // 2]
    p = model.predict(half_second)
    assert 0.0 <= p <= 1.0
    assert p == model.predict(last_window(half_second))  # the same, padded at the start

    long = np.concatenate([*clips, *clips, *clips, *clips])[: 20 * SAMPLE_RATE]
    long = np.concatenate([long, clips[-1]])  # ends on a finished sentence
    assert long.size > 20 * SAMPLE_RATE
    p = model.predict(long)
    assert p == model.predict(long[-WINDOW_SAMPLES:])  # only the last 8 s count
    assert p > COMPLETE_THRESHOLD


# -- unusable model files --------------------------------------------------------------------


def test_an_explicit_path_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "smart-turn.onnx"
    with pytest.raises(TurnModelError) as caught:
        find_turn_model(missing)
    one_line_naming_the_flag(caught.value, missing)
    with pytest.raises(TurnModelError) as caught:
        find_turn_model(tmp_path)  # a directory
    one_line_naming_the_flag(caught.value, tmp_path)
    assert caught.value.code == "turn_model"

    present = tmp_path / "model.onnx"
    present.write_bytes(b"x")
    assert find_turn_model(present) == present  # checked for existence only, not loaded


def test_a_corrupt_file_is_reported(tmp_path: Path) -> None:
    garbage = tmp_path / "smart-turn.onnx"
    garbage.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(TurnModelError) as caught:
        SmartTurn(garbage)
    one_line_naming_the_flag(caught.value, garbage)


def test_another_onnx_model_is_reported() -> None:
    silero = silero_model_path()  # loads fine, but has other inputs
    with pytest.raises(TurnModelError) as caught:
        SmartTurn(silero)
    one_line_naming_the_flag(caught.value, silero)
