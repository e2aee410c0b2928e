"""The voice benchmark's continuity analysis, on made-up audio (no models, no network)."""

from __future__ import annotations

import numpy as np

from bench.voice import IdealPiece, listen
from gateway.testing.loopback import RATE
from media import Float32Array

FRAME = 960


def tone(seconds: float) -> Float32Array:
    t = np.arange(round(seconds * RATE)) / RATE
    wave: Float32Array = (
        0.5 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    ).astype(np.float32)
    return wave


def silence(seconds: float) -> Float32Array:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def piece(text: str) -> tuple[IdealPiece, Float32Array]:
    audio = np.concatenate([silence(0.01), tone(0.6), silence(0.1)])
    return IdealPiece.of(text, audio), audio


def frames_of(
    audio: Float32Array, late: dict[int, float] | None = None
) -> list[tuple[float, Float32Array]]:
    """20 ms frames arriving on time, except frame k ``late[k]`` seconds late (and those
    after it with it, as a stalled sender's would)."""
    out, delay = [], 0.0
    for k in range(len(audio) // FRAME):
        delay += (late or {}).get(k, 0.0)
        out.append((100.0 + k * FRAME / RATE + delay, audio[k * FRAME : (k + 1) * FRAME]))
    return out


def test_on_time_audio_has_no_gaps_and_late_frames_and_late_pieces_are_found() -> None:
    (clause, a), (rest, b), (next_sentence, c) = (
        piece("Paris has many fine museums,"),
        piece("and the Louvre is big."),
        piece("The end."),
    )
    pieces = [clause, rest, next_sentence]
    steady = np.concatenate([silence(0.1), a, b, c, silence(0.2)])
    heard = listen(frames_of(steady), pieces, asked=100.0)
    assert (heard.pieces, heard.misaligned, heard.gaps, heard.late_frames) == (3, 0, [], 0)
    assert max(abs(v) for v in heard.clause_pauses_ms + heard.sentence_pauses_ms) < 1

    # The rest of the sentence 100 ms late (the sender sent silence), the next sentence
    # 300 ms late (a pause between sentences, not a gap), and one frame 60 ms late
    # in the middle of the last piece.
    late = np.concatenate([silence(0.1), a, silence(0.1), b, silence(0.3), c, silence(0.2)])
    middle = round((0.1 + 2 * len(a) / RATE + 0.1 + 0.3 + 0.3) * RATE) // FRAME
    heard = listen(frames_of(late, {middle: 0.06}), pieces, asked=100.0)
    assert (heard.pieces, heard.misaligned) == (3, 0)
    kinds = sorted((g.kind, g.piece, round(g.ms)) for g in heard.gaps)
    assert kinds == [("boundary", 0, 100), ("late frame", 2, 60)]
    assert [round(v) for v in heard.sentence_pauses_ms] == [300]
    assert (heard.late_frames, round(heard.longest_late_ms)) == (1, 60)
