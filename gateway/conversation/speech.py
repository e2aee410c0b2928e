"""Spoken replies: a reply's text, as it streams, → speakable pieces → TTS → the session's
outbound audio track. One :class:`Speaker` per WebRTC session whose answer sends audio, and
per ``/ws`` session on a gateway with a voice (the track's frames go out as binary frames,
``media.pcm_output``).

    reply.delta ──SpeechSplitter──▶ pieces (bounded) ──speaker task──▶ TTSService.stream
        ──▶ ReplyAudioTrack.put (waits when seconds of audio are queued) ──▶ the client

Synthesis of piece n+1 overlaps playback of piece n: ``put`` returns as soon as the audio
is queued. ``cut`` (barge-in, ``cancel``) flushes the track, so the next 20 ms frame is
silence, and cancels the synthesis in progress. What the person heard — the pieces whose
audio began — is what the conversation's history keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.mediastreams import MediaStreamError

from gateway.conversation.dialogue import EventSink, TurnTimes, elapsed_ms
from gateway.ops.metrics import Metrics
from media.errors import TTSError
from media.playout import ReplyAudioTrack
from media.tts.base import check_voice
from media.tts.service import TTSService
from media.tts.speakable import SpeechSplitter
from signalling import protocol

logger = logging.getLogger(__name__)

# Pieces waiting for synthesis per session. A reply longer than this is spoken in part
# (its text still arrives whole); a client that never reads the track cannot grow it.
MAX_PIECES = 64


@dataclass
class _Spoken:
    """One reply's speech."""

    reply_id: str
    times: TurnTimes
    splitter: SpeechSplitter = field(default_factory=SpeechSplitter)
    pieces: list[str] = field(default_factory=list)
    heard: set[int] = field(default_factory=set)  # pieces whose audio began
    synthesized: int = 0  # pieces whose synthesis ended (spoken, failed or empty)
    outstanding: int = 0  # chunks queued on the track, not yet played
    text_done: bool = False
    failed: bool = False  # speech failed: the rest of this reply is text only
    truncated: bool = False  # too long to speak whole: what is queued is still spoken
    requested: float | None = None  # the first piece's synthesis began
    first_chunk: float | None = None  # ... and produced its first audio
    first_audio: float | None = None  # the first frame of it went out
    ended: bool = False

    @property
    def heard_text(self) -> str:
        return " ".join(self.pieces[i] for i in sorted(self.heard))


@dataclass(frozen=True)
class _Chunk:
    spoken: _Spoken
    piece: int


class Speaker:
    def __init__(
        self,
        sink: EventSink,
        tts: TTSService,
        track: ReplyAudioTrack,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._tts = tts
        self._track = track
        self._metrics = metrics
        self._clock = clock
        self._current: _Spoken | None = None
        self._queue: deque[tuple[_Spoken, int]] = deque()
        self._wake = asyncio.Event()
        self._synthesis: asyncio.Task[None] | None = None
        self._underruns = 0
        self._voice: str | None = None  # this session's choice, where the engine allows
        track.on_mark_started = self._on_started
        track.on_mark_played = self._on_played

    @property
    def engine(self) -> str:
        return self._tts.engine.name

    @property
    def voice(self) -> str:
        return self._voice or self._tts.engine.voice

    def choose_voice(self, voice: str) -> None:
        """Speak this session's replies in ``voice``; :class:`TTSVoiceMissing` if the engine
        cannot (a speech server that lacks it says so at the next reply)."""
        check_voice(self._tts.engine, voice)
        self._voice = voice

    @property
    def speaking(self) -> bool:
        """Audio is queued or playing, or a piece is waiting for its voice."""
        return self._track.playing or bool(self._queue) or self._synthesis is not None

    def start(self) -> None:
        self._sink.spawn(self._run(), "speaker")

    # --- what the conversation says ---

    def begin(self, reply_id: str, times: TurnTimes) -> None:
        self.cut()
        self._current = _Spoken(reply_id, times)

    def add(self, reply_id: str, delta: str) -> None:
        spoken = self._current
        if spoken is None or spoken.reply_id != reply_id or spoken.failed or spoken.truncated:
            return
        for piece in spoken.splitter.push(delta):
            self._enqueue(spoken, piece)

    def finish(self, reply_id: str) -> None:
        spoken = self._current
        if spoken is None or spoken.reply_id != reply_id:
            return
        if not (spoken.failed or spoken.truncated):
            for piece in spoken.splitter.flush():
                self._enqueue(spoken, piece)
        spoken.text_done = True
        self._maybe_done(spoken)

    def cut(self) -> tuple[str, str] | None:
        """Stop speaking now. Returns ``(reply_id, text heard)`` when a reply was being
        spoken (its audio begun or still to come), else None."""
        spoken, self._current = self._current, None
        self._queue.clear()
        self._track.flush()
        if self._synthesis is not None:
            self._synthesis.cancel()
        if spoken is None or spoken.ended:
            return None
        if spoken.first_audio is not None:
            self._end(spoken, interrupted=True)
        if spoken.failed:
            return None  # spoken in part at most: the text the person read stands
        return spoken.reply_id, spoken.heard_text

    def hold(self, on: bool) -> None:
        """Silence the voice for now, keeping its place (the person may be starting to
        speak: the next frame is silence), or go on."""
        self._track.hold(on)

    def timings(self, reply_id: str) -> dict[str, float]:
        """What is known so far of a reply's first audio, for ``reply.done``."""
        spoken = self._current
        if spoken is None or spoken.reply_id != reply_id:
            return {}
        return self._timings(spoken)

    # --- the speaking task ---

    def _enqueue(self, spoken: _Spoken, piece: str) -> None:
        if len(self._queue) >= MAX_PIECES:
            logger.warning("[%s] reply %s: too long to speak whole", self._sink.id, spoken.reply_id)
            spoken.truncated = True  # the rest is text only
            return
        spoken.pieces.append(piece)
        self._queue.append((spoken, len(spoken.pieces) - 1))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            spoken, index = self._queue.popleft()
            self._synthesis = self._sink.spawn(
                self._speak(spoken, index), f"tts-{spoken.reply_id}-{index}"
            )
            # wait(), not await: a cut cancels the piece, not this loop.
            await asyncio.wait([self._synthesis])
            self._synthesis = None
            spoken.synthesized += 1
            self._maybe_done(spoken)

    async def _speak(self, spoken: _Spoken, index: int) -> None:
        if spoken.failed:
            return  # one failure is reported; the rest of the reply is not retried
        if spoken.requested is None:
            spoken.requested = self._clock()
        mark = _Chunk(spoken, index)
        try:
            pieces = self._tts.stream(spoken.pieces[index], self._voice)
            async with contextlib.aclosing(pieces) as chunks:
                async for chunk in chunks:
                    if spoken.first_chunk is None:
                        spoken.first_chunk = self._clock()
                        self._metrics.tts_first_chunk.observe(spoken.first_chunk - spoken.requested)
                    spoken.outstanding += 1
                    await self._track.put(chunk, self._tts.engine.sample_rate, mark)
                    self._track.expect_audio(True)  # mid-sentence: a gap now is an underrun
        except MediaStreamError:
            return  # the track has stopped: the session is ending
        except TTSError as exc:
            if not spoken.failed:
                spoken.failed = True
                self._metrics.errors.labels(exc.code).inc()
                self._sink.send(
                    protocol.error(exc.code, f"the reply cannot be spoken: {exc}", retryable=True)
                )
                logger.warning("[%s] speech failed: %s", self._sink.id, exc)
        finally:
            self._track.expect_audio(False)

    # --- what the track reports ---

    def _on_started(self, mark: object) -> None:
        if not isinstance(mark, _Chunk):
            return
        spoken = mark.spoken
        spoken.heard.add(mark.piece)
        if spoken.first_audio is None and spoken is self._current:
            spoken.first_audio = self._clock()
            times = spoken.times
            self._metrics.speech_end_to_first_audio.observe(spoken.first_audio - times.speech_end)
            self._sink.send(protocol.reply_audio_started(spoken.reply_id, self._timings(spoken)))

    def _on_played(self, mark: object) -> None:
        if isinstance(mark, _Chunk):
            mark.spoken.outstanding -= 1
            self._maybe_done(mark.spoken)

    def _maybe_done(self, spoken: _Spoken) -> None:
        complete = spoken.text_done and spoken.synthesized >= len(spoken.pieces)
        if complete and spoken.outstanding <= 0 and spoken is self._current and not spoken.ended:
            if spoken.first_audio is not None:
                self._end(spoken, interrupted=False)
            else:
                spoken.ended = True  # nothing was spoken: no audio events

    def _end(self, spoken: _Spoken, *, interrupted: bool) -> None:
        spoken.ended = True
        self._metrics.replies_spoken.labels("cut" if interrupted else "done").inc()
        underruns, self._underruns = self._track.underruns - self._underruns, self._track.underruns
        self._metrics.audio_underruns.inc(underruns)
        self._sink.send(protocol.reply_audio_done(spoken.reply_id, interrupted=interrupted))

    def _timings(self, spoken: _Spoken) -> dict[str, float]:
        out: dict[str, float] = {}
        if spoken.requested is not None and spoken.first_chunk is not None:
            out["tts_first_audio_ms"] = elapsed_ms(spoken.requested, spoken.first_chunk)
        if spoken.first_audio is not None:
            times = spoken.times
            out["speech_end_to_first_audio_ms"] = elapsed_ms(times.speech_end, spoken.first_audio)
            out["endpoint_to_first_audio_ms"] = elapsed_ms(times.decided, spoken.first_audio)
        return out
