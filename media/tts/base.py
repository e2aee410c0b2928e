"""The interface every speech synthesiser implements, and what they share.

Engines are synchronous and blocking (Piper holds a core per sentence, an HTTP engine waits
on the network); :class:`media.tts.service.TTSService` runs them off the event loop.
``synthesize`` is a generator so that the first audio can be played while the rest is
still being made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from media import Int16Array
from media.errors import TTSVoiceMissing

# About -50 dBFS: quieter than any speech, louder than a voice's dithering noise.
SILENCE_THRESHOLD = 100
KEEP_SILENCE_S = 0.010  # a little lead-in so the first consonant is not clipped


class TTSEngine(Protocol):
    name: str  # "piper" | "openai"
    voice: str  # what the user asked for: a voice name or a path
    sample_rate: int  # of every chunk synthesize yields
    # Whether synthesize takes another voice per call (a speech server does; Piper loads
    # one voice model per engine).
    voice_per_request: bool
    # Whether each chunk is a whole sentence (Piper): then looking one chunk ahead costs
    # nothing at a piece's end, and tells the service the piece is over in the same call.
    chunks_are_sentences: bool

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[Int16Array]:
        """Mono int16 PCM chunks of ``text`` spoken (in ``voice`` when the engine takes a
        voice per request, else its own), each as soon as it is made. Blocking."""
        ...


def check_voice(engine: TTSEngine, voice: str) -> None:
    """Raise :class:`TTSVoiceMissing` unless ``engine`` can speak in ``voice`` per session:
    a speech server takes any voice it has; Piper speaks the one voice it loaded."""
    if engine.voice_per_request or voice == engine.voice:
        return
    raise TTSVoiceMissing(
        f"{engine.name} speaks one voice per gateway ({engine.voice}); choose another with "
        "--tts-voice, or use --tts-engine openai for a voice per session"
    )


def trim_leading_silence(chunk: Int16Array, threshold: int, keep: int = 0) -> Int16Array:
    """``chunk`` from ``keep`` samples before the first one louder than ``threshold``;
    all silence leaves only its last ``keep`` samples."""
    first = _first_loud(chunk, threshold)
    start = chunk.size if first is None else first
    return chunk[max(start - keep, 0) :]


def skip_leading_silence(
    chunks: Iterator[Int16Array], sample_rate: int, threshold: int = SILENCE_THRESHOLD
) -> Iterator[Int16Array]:
    """``chunks`` with the silence before the first sound cut to ~10 ms: a voice's lead-in
    is pure latency. Chunks that are silent throughout (a network read can be) are held
    back until sound arrives; nothing after the first sound is touched. Closing this
    closes ``chunks`` (an HTTP engine's response, say) at once, not when it is collected."""
    keep = round(sample_rate * KEEP_SILENCE_S)
    held = np.zeros(0, dtype=np.int16)  # the last ``keep`` samples of the silence so far
    try:
        for chunk in chunks:
            joined = np.concatenate((held, chunk)) if held.size else chunk
            if _first_loud(joined, threshold) is not None:
                yield trim_leading_silence(joined, threshold, keep)
                break
            held = joined[max(joined.size - keep, 0) :]
        else:  # silent to the end
            if held.size:
                yield held
            return
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _first_loud(chunk: Int16Array, threshold: int) -> int | None:
    # int32 first: abs() of -32768 overflows int16.
    loud = np.flatnonzero(np.abs(chunk.astype(np.int32)) > threshold)
    return int(loud[0]) if loud.size else None
