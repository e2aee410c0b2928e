"""The voice half of a session: audio → utterances → ASR → ``transcript.final``.

Stages, each owned by the session and bounded::

    track ──AudioListener──▶ endpointer events ──▶ utterance queue (4, drop oldest)
        ──▶ transcriber task ──ASRService (shared, off-loop)──▶ transcript.final
                                                                  └──▶ Conversation

Early ASR: when speech pauses (``SpeechPaused``, 200 ms into the 500 ms hangover) and the
recogniser is idle, the utterance so far is transcribed at once. If the pause becomes the
end, with no speech in between, that result is used and most of the hangover has hidden
the ASR time; if the person goes on, it is discarded. One speculation per session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCDataChannel
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.conversation.dialogue import Conversation
from gateway.ops.metrics import Metrics
from media import Float32Array
from media.asr.base import Transcription
from media.asr.filters import clean_transcript
from media.asr.service import ASRService
from media.endpointer import EndpointerEvent, EndpointerSettings, SpeechPaused, SpeechStarted
from media.errors import ASRBusyError, ASRError
from media.listener import AudioListener
from media.vad import VadBatcher
from signalling import protocol
from signalling.session import Session

logger = logging.getLogger(__name__)

UTTERANCE_QUEUE_LIMIT = 4


@dataclass(frozen=True)
class _Speculation:
    start_sample: int
    end_sample: int
    started: float
    task: asyncio.Task[Transcription | ASRError]


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Float32Array
    speech_ms: float
    ended_at: float  # time.monotonic() when the endpointer decided speech had ended
    early: _Speculation | None = None  # ASR already started at the pause that ended it


class VoicePipeline:
    """Owned by a WebRTC session; hands speech starts and transcripts to the conversation."""

    def __init__(
        self,
        session: Session,
        conversation: Conversation,
        asr: ASRService,
        vad: VadBatcher,
        endpointer: EndpointerSettings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.conversation = conversation
        self._asr = asr
        self._vad = vad
        self._endpointer = endpointer
        self._clock = clock
        self._ids = itertools.count(1)
        self._current_utterance: str | None = None
        self._utterances: asyncio.Queue[Utterance] = asyncio.Queue(UTTERANCE_QUEUE_LIMIT)
        self._listening = False
        self._speculation: _Speculation | None = None
        session.on_message = conversation.on_message
        session.on_channel_open = conversation.send_ready
        session.pc.on("track", self.on_track)
        session.pc.on("datachannel", self.on_datachannel)

    def start(self) -> None:
        self.session.spawn(self._transcribe_loop(), "transcriber")

    # --- inputs ---

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        if self._listening:
            # Only the first audio track is heard; others are still drained, since an
            # unread aiortc track buffers without bound.
            self.session.spawn(_drain(track), "drain")
            return
        self._listening = True
        listener = AudioListener(
            self._vad, self._endpointer, self._on_vad_event, on_frame=self._on_frame
        )
        self.session.spawn(listener.run(track), "listener")

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        if not self.session.attach_channel(channel):
            logger.info("[%s] ignoring extra data channel %r", self.session.id, channel.label)

    def _on_frame(self, lost: int) -> None:
        self.metrics.frames_received.inc()
        if lost:
            self.metrics.frames_lost.inc(lost)

    def _on_vad_event(self, event: EndpointerEvent) -> None:
        self.session.touch()
        if isinstance(event, SpeechStarted):
            self._discard_speculation()
            self._current_utterance = f"u{next(self._ids)}"
            self.session.send(protocol.speech_started(self._current_utterance))
            self.conversation.on_speech_started()
            return
        if isinstance(event, SpeechPaused):
            self._speculate(event)
            return
        early = self._speculation
        self._speculation = None
        if early is not None and (early.start_sample, early.end_sample) != (
            event.start_sample,
            event.end_sample,
        ):
            self._discard(early)
            early = None
        utterance_id = self._current_utterance or f"u{next(self._ids)}"
        self._current_utterance = None
        self.session.send(protocol.speech_stopped(utterance_id))
        utterance = Utterance(
            id=utterance_id,
            audio=event.audio,
            speech_ms=1000 * event.speech_samples / self._endpointer.sample_rate,
            ended_at=self._clock(),
            early=early,
        )
        self.metrics.utterances.inc()
        if self._utterances.full():
            # ASR is behind real time: the oldest speech is the least useful now.
            dropped = self._utterances.get_nowait()
            if dropped.early is not None:
                self._discard(dropped.early)
            self.metrics.utterances_dropped.inc()
            logger.warning("[%s] ASR backlog: dropped utterance %s", self.session.id, dropped.id)
        self._utterances.put_nowait(utterance)

    def _speculate(self, event: SpeechPaused) -> None:
        self._discard_speculation()  # the person spoke again after an earlier pause
        if self._asr.pending:
            return  # never compete with real work for the recogniser
        task = self.session.spawn(self._recognise(event.audio), "early-asr")
        self._speculation = _Speculation(event.start_sample, event.end_sample, self._clock(), task)

    async def _recognise(self, audio: Float32Array) -> Transcription | ASRError:
        # The error is returned, not raised: a discarded speculation's failure is nobody's,
        # and an awaited one is reported by the transcriber.
        try:
            return await self._asr.transcribe(audio, self.conversation.language)
        except ASRError as exc:
            return exc

    def _discard_speculation(self) -> None:
        if self._speculation is not None:
            self._discard(self._speculation)
            self._speculation = None

    def _discard(self, speculation: _Speculation) -> None:
        speculation.task.cancel()
        self.metrics.early_asr.labels("discarded").inc()

    async def _transcribe_loop(self) -> None:
        while True:
            utterance = await self._utterances.get()
            try:
                await self._transcribe(utterance)
            except Exception:  # a bug with one utterance must not deafen the session
                logger.exception("[%s] %s: transcription failed", self.session.id, utterance.id)
                self.conversation.report_error(
                    "internal", "this utterance could not be transcribed", retryable=True
                )

    async def _transcribe(self, utterance: Utterance) -> None:
        early = utterance.early
        if early is not None:
            self.metrics.early_asr.labels("used").inc()
            started = early.started
            outcome = await early.task
        else:
            started = self._clock()
            outcome = await self._recognise(utterance.audio)
        if isinstance(outcome, ASRError):
            retryable = isinstance(outcome, ASRBusyError)
            self.conversation.report_error(outcome.code, str(outcome), retryable=retryable)
            return
        result = outcome
        finished = self._clock()
        self.metrics.asr_time.observe(finished - started)
        text = clean_transcript(result)
        timings = {
            "speech_ms": round(utterance.speech_ms, 1),
            "asr_ms": round(1000 * (finished - started), 1),
            "endpoint_to_final_ms": round(1000 * (finished - utterance.ended_at), 1),
            # How long before the endpoint ASR began (0 when it began at the endpoint).
            "asr_head_start_ms": round(1000 * max(0.0, utterance.ended_at - started), 1),
        }
        if not text:
            logger.debug("[%s] %s: no speech (%r)", self.session.id, utterance.id, result.text)
            return
        logger.info(
            "[%s] %s: %r speech=%.0fms asr=%.0fms",
            self.session.id,
            utterance.id,
            text,
            timings["speech_ms"],
            timings["asr_ms"],
        )
        self.metrics.transcripts.inc()
        self.metrics.endpoint_to_final.observe(finished - utterance.ended_at)
        self.session.send(protocol.transcript_final(utterance.id, text, timings))
        self.conversation.on_transcript(utterance.id, text, utterance.ended_at)


async def _drain(track: MediaStreamTrack) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
