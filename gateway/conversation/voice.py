"""The voice half of a session: audio → utterances → ASR → ``transcript.final``.

Stages, each owned by the session and bounded::

    track ──AudioListener──▶ endpointer events ──TurnTracker (pure)──▶ actions
        ──▶ utterance queue (4, drop oldest) ──▶ transcriber task
        ──ASRService (shared, off-loop)──▶ transcript.final ──▶ Conversation

What a turn is, and when early ASR starts or is discarded, is decided by
:class:`gateway.conversation.turns.TurnTracker`; this module owns the tasks it implies.

End of turn: at a short pause the utterance so far is transcribed (early ASR) and, with
``--turn-detection`` other than ``fixed``, :class:`gateway.conversation.endofturn.TurnJudge`
decides from that transcript (and the audio model) whether the person has finished: the
turn ends at once (END), or after a little more silence while the answer starts early and
is held (PREEMPT), or only at the long silence limit (WAIT). Live captions
(``transcript.partial``) come from the same recogniser, only when it is idle.

Timings start at the end of speech itself: the last voiced sample, mapped to the time it
arrived through the listener's :class:`media.audio.SampleClock`. The endpointer decides a
hangover later (``endpoint_ms``); both are reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.conversation.captions import CaptionStabiliser
from gateway.conversation.dialogue import Conversation, ReplyVoice, TurnTimes, elapsed_ms
from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.turn_policy import TurnDecision
from gateway.conversation.turns import (
    DiscardEarlyASR,
    PauseReached,
    StartEarlyASR,
    StartPartialASR,
    TurnEnded,
    TurnStarted,
    TurnTracker,
)
from gateway.ops.config import Config, partial_interval_ms
from gateway.ops.metrics import Metrics
from media import Float32Array
from media.asr.base import Transcription
from media.asr.filters import clean_transcript
from media.asr.service import Priority, Recogniser
from media.echo import EchoCanceller
from media.endpointer import EndpointerEvent, EndpointerSettings
from media.errors import ASRBusyError, ASRError, ASRUnavailable
from media.listener import AudioListener
from media.pcm_input import PcmInput
from media.vad import CHUNK_SAMPLES, VadBatcher
from signalling import protocol
from signalling.session import Session

logger = logging.getLogger(__name__)

UTTERANCE_QUEUE_LIMIT = 4
# Beyond min_speech_ms (and the barge-in wait), how long a held voice waits for the
# endpointer to confirm speech: Silero's onset lags the voice by a chunk or two.
HOLD_SLACK_MS = 150
# A partial caption not started by then is stale: newer speech will ask again.
PARTIAL_DEADLINE_S = 0.5


@dataclass(frozen=True)
class _Early:
    started: float
    task: asyncio.Task[Transcription | ASRError]


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Float32Array
    speech_ms: float
    times: TurnTimes
    early: _Early | None = None  # ASR already started at the pause that ended it


class VoicePipeline:
    """Owned by a session; hands speech starts and transcripts to the conversation. It
    hears the first audio track of ``pc`` (WebRTC), or PCM frames (``/ws``: ``listen_pcm``,
    with ``pc`` None)."""

    def __init__(
        self,
        session: Session,
        pc: RTCPeerConnection | None,
        conversation: Conversation,
        asr: Recogniser,
        vad: VadBatcher,
        endpointer: EndpointerSettings,
        metrics: Metrics,
        *,
        judge: TurnJudge | None = None,
        likely_silence_ms: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.conversation = conversation
        self._asr = asr
        self._vad = vad
        self._endpointer = endpointer
        self._clock = clock
        self._judge = judge if judge is not None and judge.decides else None
        self._likely_silence_ms = likely_silence_ms
        # What judged the current turn over, if anything did before the long silence.
        self._decided_by: protocol.EndOfTurn | None = None
        self._turns = TurnTracker(early_always=self._judge is not None)
        self._captions = CaptionStabiliser()
        self._partial: asyncio.Task[None] | None = None
        self._utterances: asyncio.Queue[Utterance] = asyncio.Queue(UTTERANCE_QUEUE_LIMIT)
        self._listener: AudioListener | None = None
        self._early: _Early | None = None
        # While the gateway speaks: its own echo, and speech that must last to interrupt.
        self._speaker: ReplyVoice | None = None
        self._echo: EchoCanceller | None = None
        self._barge_in_wait_s = 0.0
        self._unconfirmed: str | None = None  # a turn begun while speaking, not yet heard
        self._voice_needed_s = 0.0  # voice it still needs before it interrupts
        self._holding = 0  # > 0: the voice is held at a possible onset (its generation)
        self._holds = 0
        if pc is not None:
            pc.on("track", self.on_track)

    def start(self) -> None:
        self.session.spawn(self._transcribe_loop(), "transcriber")

    def speak_with(self, speaker: ReplyVoice, barge_in_min_ms: int) -> None:
        """The session speaks: while it does, only speech of ``barge_in_min_ms``
        interrupts it (the endpointer has already waited min_speech_ms of it)."""
        self._speaker = speaker
        self._barge_in_wait_s = max(0, barge_in_min_ms - self._endpointer.min_speech_ms) / 1000

    def cancel_echo(self, echo: EchoCanceller) -> None:
        """Remove the gateway's own voice from the microphone from now on."""
        self._echo = echo
        if self._listener is not None:
            self._listener.echo = echo

    # --- inputs ---

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        if self._listener is not None:
            # Only the first audio track is heard. The answer declines the others
            # (signalling.peer), which stops them; draining is the backstop, since an
            # unread aiortc track buffers without bound.
            self.session.spawn(drain(track), "drain")
            return
        self.session.spawn(self._new_listener().run(track), "listener")

    def listen_pcm(self, rate: int) -> PcmInput:
        """Hear PCM frames rather than a track: the caller hands each to ``receive``."""
        if self._listener is not None:
            raise RuntimeError(f"[{self.session.id}] the voice already has an audio source")
        pcm = PcmInput(
            self._new_listener(),
            rate=rate,
            on_frame=lambda: self._on_frame(0),
            clock=self._clock,
            log_prefix=f"[{self.session.id}] ",
        )
        self.session.spawn(pcm.watch_gaps(), "audio-gaps")
        return pcm

    def _new_listener(self) -> AudioListener:
        self._listener = listener = AudioListener(
            self._vad,
            self._endpointer,
            self.on_vad_event,
            on_frame=self._on_frame,
            on_probability=self._on_probability,
            clock=self._clock,
        )
        listener.echo = self._echo
        return listener

    def _on_probability(self, probability: float) -> None:
        """While the gateway speaks, the first voiced chunk holds the voice at once, so a
        person who starts to talk hears it stop within a frame or two; the hold becomes a
        cut when the barge-in is confirmed, and is released if it was not speech after all
        (the endpointer gives up, or the time for confirming runs out)."""
        speaker, listener = self._speaker, self._listener
        if speaker is None or listener is None:
            return
        voiced = probability >= self._endpointer.threshold
        if self._unconfirmed is not None:
            if voiced:  # more voice in this turn: evidence of a person, not a burst
                self._voice_needed_s -= CHUNK_SAMPLES / self._endpointer.sample_rate
                if self._voice_needed_s <= 0:
                    self._confirm(self._unconfirmed)
            return
        if self._holding:
            if not listener.endpointer.hearing and self._unconfirmed is None:
                self._release_hold(self._holding)
            return
        if voiced and speaker.speaking:
            self._holds += 1
            self._holding = self._holds
            speaker.hold(True)
            self.session.spawn(self._hold_expires(self._holding), "hold")

    async def _hold_expires(self, hold: int) -> None:
        # The endpointer needs min_speech_ms, then barge-in needs its wait; Silero lags.
        await asyncio.sleep(
            (self._endpointer.min_speech_ms + HOLD_SLACK_MS) / 1000 + self._barge_in_wait_s
        )
        self._release_hold(hold)

    def _release_hold(self, hold: int) -> None:
        # Not while a turn waits for confirmation: it ends in a cut or in being ignored.
        if self._holding == hold and self._speaker is not None and self._unconfirmed is None:
            self._holding = 0
            self._speaker.hold(False)

    def _on_frame(self, lost: int) -> None:
        self.metrics.frames_received.inc()
        if lost:
            self.metrics.frames_lost.inc(lost)

    def on_vad_event(self, event: EndpointerEvent) -> None:
        """What the listener's endpointer found (also the seam for tests)."""
        self.session.touch()
        for action in self._turns.on_event(
            event, recogniser_idle=self._asr.idle, turns_idle=not self._asr.urgent_pending
        ):
            if isinstance(action, TurnStarted):
                self._turn_started(action.utterance_id)
            elif isinstance(action, StartEarlyASR):
                task = self.session.spawn(
                    self._recognise(action.audio, Priority.EARLY), "early-asr"
                )
                self._early = _Early(self._clock(), task)
            elif isinstance(action, PauseReached):
                if self._judge is not None and self._early is not None:
                    self.session.spawn(self._decide(self._early, action.audio), "turn-decision")
            elif isinstance(action, StartPartialASR):
                # Not for a turn that may be the gateway's own echo (not yet announced).
                busy = self._partial is not None and not self._partial.done()
                if not busy and self._unconfirmed != action.utterance_id:
                    self._partial = self.session.spawn(
                        self._caption(action.utterance_id, action.audio), "partial-asr"
                    )
            elif isinstance(action, DiscardEarlyASR):
                self._discard_early(as_caption=action.caption)
            else:
                self._end_turn(action)

    def _turn_started(self, utterance_id: str) -> None:
        self._decided_by = None
        self._captions.reset()
        speaker = self._speaker
        if speaker is not None and speaker.speaking and self._barge_in_wait_s > 0:
            # Perhaps the gateway's own voice, or a cough: it must have this much more
            # voice, in this turn, to interrupt (counted in _on_probability).
            self._unconfirmed = utterance_id
            self._voice_needed_s = self._barge_in_wait_s
            return
        self._announce(utterance_id)

    def _announce(self, utterance_id: str) -> None:
        self._holding = 0  # cut, not held: the barge-in stops the reply
        self.session.send(protocol.speech_started(utterance_id))
        self.conversation.on_speech_started()

    def _confirm(self, utterance_id: str) -> None:
        self._unconfirmed = None
        self.metrics.barge_ins.labels("interrupted").inc()
        self._announce(utterance_id)

    def _end_turn(self, turn: TurnEnded) -> None:
        if self._unconfirmed == turn.utterance_id:
            # Too short to interrupt the voice: echo or noise, not a turn. Not transcribed.
            self._unconfirmed = None
            self._discard_early()
            self._release_hold(self._holding)
            self.metrics.barge_ins.labels("ignored").inc()
            logger.debug("[%s] %s: too short to interrupt", self.session.id, turn.utterance_id)
            return
        early, self._early = (self._early, None) if turn.use_early else (None, self._early)
        self._stop_captions()
        decided = self._clock()
        listener = self._listener
        speech_end = listener.arrivals.time_of(turn.voiced_end_sample) if listener else None
        end_of_turn: protocol.EndOfTurn = "silence"
        if turn.reason == "decided" and self._decided_by is not None:
            end_of_turn = self._decided_by
        self.metrics.turn_ends.labels(end_of_turn).inc()
        self.session.send(protocol.speech_stopped(turn.utterance_id, end_of_turn))
        utterance = Utterance(
            id=turn.utterance_id,
            audio=turn.audio,
            speech_ms=1000 * turn.speech_samples / self._endpointer.sample_rate,
            times=TurnTimes(speech_end=min(speech_end or decided, decided), decided=decided),
            early=early,
        )
        self.metrics.utterances.inc()
        if self._utterances.full():
            # ASR is behind real time: the oldest speech is the least useful now.
            dropped = self._utterances.get_nowait()
            if dropped.early is not None:
                self._cancel(dropped.early)
            self.metrics.utterances_dropped.inc()
            logger.warning("[%s] ASR backlog: dropped utterance %s", self.session.id, dropped.id)
            self.conversation.report_error(
                "asr_backlog", "speech came faster than it could be transcribed", retryable=True
            )
        self._utterances.put_nowait(utterance)

    async def _recognise(
        self, audio: Float32Array, priority: Priority = Priority.FINAL
    ) -> Transcription | ASRError:
        # The error is returned, not raised: a discarded early run's failure is nobody's,
        # and an awaited one is reported by the transcriber.
        try:
            return await self._asr.transcribe(audio, self.conversation.language, priority=priority)
        except ASRError as exc:
            return exc

    async def _decide(self, early: _Early, audio: Float32Array) -> None:
        """Whether the pause that started ``early`` ends the turn; acts only if that pause
        is still going on when the transcript (and the model's verdict) is in."""
        judge = self._judge
        assert judge is not None
        probability = await judge.probability(audio)
        await asyncio.wait({early.task})
        listener = self._listener
        if self._early is not early or early.task.cancelled() or listener is None:
            return  # the person went on, or the silence already ended the turn
        outcome = early.task.result()
        if isinstance(outcome, ASRError):
            return  # the silence decides; the transcriber reports the error
        text = clean_transcript(outcome)
        judgement = judge.judge(text, probability, self.conversation.language)
        logger.debug(
            "[%s] pause: %s by %s (model %s)",
            self.session.id,
            judgement.decision.name,
            judgement.by,
            "-" if probability is None else f"{probability:.2f}",
        )
        self.metrics.turn_decisions.labels(judgement.decision.value, judgement.by).inc()
        self._decided_by = judgement.by
        if judgement.decision is TurnDecision.END:
            events = listener.endpointer.end_pause()
        elif judgement.decision is TurnDecision.PREEMPT:
            utterance_id = self._turns.current
            if utterance_id is not None and self._unconfirmed is None:
                self.conversation.preempt(utterance_id, text)
            events = listener.endpointer.end_pause(self._likely_silence_ms)
        else:
            return
        for event in events:
            self.on_vad_event(event)

    async def _caption(self, utterance_id: str, audio: Float32Array) -> None:
        """A live caption of the utterance so far, if the recogniser gets to it in time."""
        try:
            outcome = await self._asr.transcribe(
                audio,
                self.conversation.language,
                priority=Priority.PARTIAL,
                deadline_s=PARTIAL_DEADLINE_S,
            )
        except ASRError:
            return  # stale or busy: captions are best effort
        self._show_caption(utterance_id, outcome)

    async def _caption_from(
        self, utterance_id: str, task: asyncio.Task[Transcription | ASRError]
    ) -> None:
        """A transcript begun at a dip in the voice, which went on: a caption after all."""
        await asyncio.wait({task})
        if not task.cancelled():
            self._show_caption(utterance_id, task.result())

    def _show_caption(self, utterance_id: str, outcome: Transcription | ASRError) -> None:
        if isinstance(outcome, ASRError):
            return
        if self._turns.current != utterance_id or self._unconfirmed == utterance_id:
            return  # the turn ended meanwhile (the final replaces any caption), or is unheard
        text = clean_transcript(outcome)
        if not text:
            return
        caption = self._captions.update(text)
        self.metrics.partial_transcripts.inc()
        self.session.send(
            protocol.transcript_partial(utterance_id, caption.text, caption.stable_chars)
        )

    def _stop_captions(self) -> None:
        if self._partial is not None:
            self._partial.cancel()
            self._partial = None
        self._captions.reset()

    def _discard_early(self, *, as_caption: bool = False) -> None:
        self.conversation.withdraw_preempt()
        early, self._early = self._early, None
        if early is None:
            return
        utterance_id = self._turns.current
        if as_caption and utterance_id is not None and self._endpointer.progress_ms:
            # Whisper is already at it (it began on an idle recogniser): show the result.
            self.metrics.early_asr.labels("caption").inc()
            self.session.spawn(self._caption_from(utterance_id, early.task), "dip-caption")
        else:
            self._cancel(early)

    def _cancel(self, early: _Early) -> None:
        early.task.cancel()
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
        try:
            await self._transcribe_one(utterance)
        finally:
            # An answer begun early for a turn that yields no transcript is withdrawn.
            self.conversation.withdraw_preempt(utterance.id)

    async def _transcribe_one(self, utterance: Utterance) -> None:
        early = utterance.early
        if early is not None:
            self.metrics.early_asr.labels("used").inc()
            started = early.started
            outcome = await early.task
        else:
            started = self._clock()
            outcome = await self._recognise(utterance.audio)
        if isinstance(outcome, ASRError):
            retryable = isinstance(outcome, ASRBusyError | ASRUnavailable)
            self.conversation.report_error(outcome.code, str(outcome), retryable=retryable)
            return
        finished = self._clock()
        self.metrics.asr_time.observe(finished - started)
        text = clean_transcript(outcome)
        times = utterance.times
        timings = {
            "speech_ms": round(utterance.speech_ms, 1),
            "asr_ms": elapsed_ms(started, finished),
            # How long before the endpoint ASR began (0 when it began at the endpoint).
            "asr_head_start_ms": elapsed_ms(started, max(started, times.decided)),
            # End of speech → the endpointer's decision (the hangover it waits for).
            "endpoint_ms": elapsed_ms(times.speech_end, times.decided),
            # What the person waits: end of speech → this transcript.
            "speech_end_to_final_ms": elapsed_ms(times.speech_end, finished),
            "endpoint_to_final_ms": elapsed_ms(times.decided, finished),
        }
        if not text:
            logger.debug("[%s] %s: no speech (%r)", self.session.id, utterance.id, outcome.text)
            return
        # What people say stays out of the log unless asked for (privacy): timings only.
        logger.info(
            "[%s] %s: transcript speech=%.0fms asr=%.0fms end-of-speech→text=%.0fms",
            self.session.id,
            utterance.id,
            timings["speech_ms"],
            timings["asr_ms"],
            timings["speech_end_to_final_ms"],
        )
        logger.debug("[%s] %s: %r", self.session.id, utterance.id, text)
        self.metrics.transcripts.inc()
        self.metrics.endpoint_to_final.observe(finished - times.decided)
        self.metrics.speech_end_to_final.observe(finished - times.speech_end)
        self.session.send(protocol.transcript_final(utterance.id, text, timings))
        self.conversation.on_transcript(utterance.id, text, times)


def endpointer_settings(config: Config, asr_device: str) -> EndpointerSettings:
    """The endpointer a session's voice gets from the gateway's settings."""
    return EndpointerSettings(
        silence_ms=config.vad_silence_ms,
        pause_ms=config.turn_min_silence_ms,
        progress_ms=partial_interval_ms(config, asr_device),
        # Judged turns transcribe from the moment the voice drops.
        dips=config.turn_detection != "fixed",
    )


async def drain(track: MediaStreamTrack) -> None:
    """Read and discard a track, so that aiortc does not queue its frames forever."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
