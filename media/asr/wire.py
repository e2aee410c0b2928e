"""The OpenAI transcription API on the wire (``POST /v1/audio/transcriptions``), both
ends: what the gateway's client sends and reads, what its ASR server reads and answers.
Pure: bytes and JSON in, arrays and :class:`Transcription` out.

The request is ``multipart/form-data`` with the audio as ``file`` (the client sends a
16 kHz mono 16-bit WAV, which every server of this API reads) and ``model``,
``language``, ``response_format`` fields. ``verbose_json`` carries each segment's
``avg_logprob`` and ``no_speech_prob``, which the gateway's hallucination filter needs; a
server that answers with text alone still works, without that filter.

How urgent a job is travels in headers (:data:`PRIORITY_HEADER`, :data:`DEADLINE_HEADER`)
that other servers ignore: an unknown form field might be refused.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Mapping
from typing import Any

import numpy as np

from media import Float32Array
from media.asr.base import Segment, Transcription

PATH = "/v1/audio/transcriptions"
PRIORITY_HEADER = "X-ASR-Priority"  # final | early | partial
DEADLINE_HEADER = "X-ASR-Deadline-Ms"  # drop the job if it has not started by then
RESPONSE_FORMATS = ("json", "text", "verbose_json")  # srt/vtt need timestamps: not kept
SAMPLE_RATE = 16000


def encode_wav(audio: Float32Array, rate: int = SAMPLE_RATE) -> bytes:
    """Mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return out.getvalue()


def decode_plain_wav(data: bytes, rate: int = SAMPLE_RATE) -> Float32Array | None:
    """The samples of a 16-bit mono WAV at ``rate`` (what the gateway sends), read
    without FFmpeg; None for anything else (another format, rate or layout), which the
    server then decodes with PyAV."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, rate):
                return None
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, struct.error):
        return None  # WAVE_FORMAT_EXTENSIBLE and friends: PyAV reads them
    pcm = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def transcription_from_json(body: object) -> Transcription:
    """What a server answered (``json`` or ``verbose_json``). Raises ValueError on a body
    that is neither."""
    if not isinstance(body, Mapping) or not isinstance(body.get("text"), str):
        raise ValueError("the answer has no text")
    segments = body.get("segments")
    if isinstance(segments, list) and all(isinstance(s, Mapping) for s in segments):
        return Transcription(
            tuple(
                Segment(
                    str(s.get("text", "")),
                    _number(s.get("avg_logprob"), 0.0),
                    _number(s.get("no_speech_prob"), 0.0),
                )
                for s in segments
            )
        )
    text = str(body["text"])
    return Transcription((Segment(text, 0.0, 0.0),) if text.strip() else ())


def transcription_to_json(
    result: Transcription, *, response_format: str, language: str | None, duration_s: float
) -> dict[str, Any]:
    """The JSON answer for ``json`` or ``verbose_json`` (as OpenAI's ``whisper-1``
    answers; no timestamps are kept, so each segment spans the whole audio)."""
    if response_format != "verbose_json":
        return {"text": result.text}
    return {
        "task": "transcribe",
        "language": language or "",
        "duration": round(duration_s, 3),
        "text": result.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": 0.0,
                "end": round(duration_s, 3),
                "text": segment.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": segment.avg_logprob,
                "compression_ratio": 0.0,
                "no_speech_prob": segment.no_speech_prob,
            }
            for i, segment in enumerate(result.segments)
        ],
    }


def _number(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
