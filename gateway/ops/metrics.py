"""Prometheus metrics for one gateway, on their own registry (no process-global state, so
two apps in one test process never share counters)."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from media.asr.service import Priority

logger = logging.getLogger(__name__)

# Latency buckets in seconds: from a fast loopback turn to a cold model load.
_LATENCY = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
LOOP_LAG_INTERVAL_S = 0.5
# How late the loop-lag timer fires: from unnoticeable to a stall that breaks audio pacing.
_LOOP_LAG = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # process_resident_memory_bytes, process_open_fds, CPU seconds (Linux /proc).
        ProcessCollector(registry=r)
        # python_gc_collections_total{generation="2"}: full collections, which free ended
        # sessions' native state (gateway.ops.memory.freeze_startup_heap).
        GCCollector(registry=r)
        self.sessions_active = Gauge("gateway_sessions_active", "Open sessions", registry=r)
        self.sessions_started = Counter(
            "gateway_sessions_started", "Sessions started", ["transport"], registry=r
        )
        self.sessions_ended = Counter(
            "gateway_sessions_ended", "Sessions ended, by reason", ["reason"], registry=r
        )
        self.utterances = Counter("gateway_utterances", "Utterances endpointed", registry=r)
        self.utterances_dropped = Counter(
            "gateway_utterances_dropped", "Utterances dropped (ASR backlog)", registry=r
        )
        self.transcripts = Counter("gateway_transcripts", "transcript.final sent", registry=r)
        self.replies = Counter(
            "gateway_replies", "Replies ended, by outcome", ["outcome"], registry=r
        )
        self.errors = Counter("gateway_errors", "error events, by code", ["code"], registry=r)
        self.events_dropped = Counter(
            "gateway_events_dropped",
            "Events dropped for a client that does not read, by type",
            ["type"],
            registry=r,
        )
        self.frames_received = Counter(
            "gateway_audio_frames_received", "Audio frames decoded", registry=r
        )
        self.frames_lost = Counter(
            "gateway_audio_frames_lost", "Audio frames missing from the stream", registry=r
        )
        self.frames_dropped = Counter(
            "gateway_audio_frames_dropped",
            "Decoded audio frames dropped, oldest first, while the listener was 5 s behind",
            registry=r,
        )
        self.frames_concealed = Counter(
            "gateway_audio_frames_concealed",
            "Lost audio frames concealed by Opus PLC (also in frames_lost)",
            registry=r,
        )
        self.frames_recovered = Counter(
            "gateway_audio_frames_recovered",
            "Lost audio frames rebuilt from the next packet's Opus in-band FEC (also in "
            "frames_lost)",
            registry=r,
        )
        self.packets_late = Counter(
            "gateway_audio_packets_late",
            "Audio packets that arrived after their frame had been concealed",
            registry=r,
        )
        self.early_asr = Counter(
            "gateway_early_asr",
            "ASR started at a pause or a dip in the voice: used (it was the end), "
            "discarded, or shown as a caption (the person went on)",
            ["outcome"],
            registry=r,
        )
        self.asr_queue_depth = Gauge(
            "gateway_asr_queue_depth", "ASR jobs waiting for the worker (not running)", registry=r
        )
        self.asr_wait = Histogram(
            "gateway_asr_wait_seconds",
            "Time an ASR job waited for the worker, by priority (final, early, partial)",
            ["priority"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        for priority in Priority:
            self.asr_wait.labels(priority.name.lower())  # every series from the start
        self.asr_batch_size = Histogram(
            "gateway_asr_batch_size",
            "Utterances per ASR engine call (batched on a GPU)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.turn_ends = Counter(
            "gateway_turn_ends",
            "Turns ended, by what decided: silence (the long limit), text or model",
            ["end_of_turn"],
            registry=r,
        )
        self.turn_decisions = Counter(
            "gateway_turn_decisions",
            "Verdicts at a pause: end, preempt (probably over) or wait; by text or model",
            ["decision", "by"],
            registry=r,
        )
        self.preemptive_replies = Counter(
            "gateway_preemptive_replies",
            "Answers started before the turn was final: used, or wasted (withdrawn)",
            ["outcome"],
            registry=r,
        )
        self.partial_transcripts = Counter(
            "gateway_partial_transcripts", "transcript.partial events sent", registry=r
        )
        self.replies_spoken = Counter(
            "gateway_replies_spoken",
            "Spoken replies ended: played to the end (done) or interrupted (cut)",
            ["outcome"],
            registry=r,
        )
        self.audio_underruns = Counter(
            "gateway_audio_underruns",
            "Outbound audio frames due mid-sentence with no audio ready",
            registry=r,
        )
        self.barge_ins = Counter(
            "gateway_barge_ins",
            "Speech while the gateway spoke: interrupted it, or too short to (ignored)",
            ["outcome"],
            registry=r,
        )
        self.asr_pending = Gauge(
            "gateway_asr_pending", "Utterances waiting for or in ASR", registry=r
        )
        self.loop_lag = Gauge(
            "gateway_event_loop_lag_seconds", "Event-loop lag, last sample", registry=r
        )
        # Every sample, so that a p99 over any window can be read (the gauge keeps one).
        self.loop_lags = Histogram(
            "gateway_event_loop_delay_seconds",
            "How late each event-loop lag sample fired",
            buckets=_LOOP_LAG,
            registry=r,
        )
        self.tasks = Gauge("gateway_asyncio_tasks", "asyncio tasks alive in the loop", registry=r)

        def seconds(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=_LATENCY, registry=r)

        # Two clocks for the same wait: from the end of speech itself (the last voiced
        # sample's arrival: what a person feels), and from the endpointer's decision.
        self.speech_end_to_final = seconds(
            "gateway_speech_end_to_final_seconds", "End of speech to transcript.final"
        )
        self.endpoint_to_final = seconds(
            "gateway_endpoint_to_final_seconds",
            "End-of-turn decision (after the VAD hangover) to transcript.final",
        )
        self.asr_time = seconds("gateway_asr_seconds", "ASR time per utterance")
        self.llm_first_token = seconds(
            "gateway_llm_first_token_seconds", "Ollama request to first token"
        )
        self.speech_end_to_first_token = seconds(
            "gateway_speech_end_to_first_token_seconds",
            "End of speech (or a typed message) to the first reply token",
        )
        self.endpoint_to_first_token = seconds(
            "gateway_endpoint_to_first_token_seconds",
            "End-of-turn decision (or a typed message) to the first reply token",
        )
        self.offer_time = seconds("gateway_offer_seconds", "POST /offer handling time")
        self.tts_first_chunk = seconds(
            "gateway_tts_first_chunk_seconds", "Speech synthesis request to its first audio"
        )
        self.speech_end_to_first_audio = seconds(
            "gateway_speech_end_to_first_audio_seconds",
            "End of speech (or a typed message) to the first frame of the spoken reply",
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def watch_loop(metrics: Metrics, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Samples how late a timer fires (how long any ready coroutine waits for the loop),
    and how many tasks the loop holds: the first thing to grow when work is not ended."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - start - interval_s)
        metrics.loop_lag.set(lag)
        metrics.loop_lags.observe(lag)
        metrics.tasks.set(len(asyncio.all_tasks(loop)))


class ASRMetrics:
    """The ASR scheduler's observations (:class:`media.asr.service.ASRObserver`) as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def job_started(self, priority: Priority, waited_s: float) -> None:
        self._metrics.asr_wait.labels(priority.name.lower()).observe(waited_s)

    def batch_done(self, size: int, seconds: float) -> None:
        self._metrics.asr_batch_size.observe(size)


class ReceiverMetrics:
    """The audio receive path's observations
    (:class:`signalling.audio_receiver.ReceiverObserver`) as metrics. A frame it conceals
    or rebuilds keeps the timeline whole, so the listener sees no gap: it is counted as
    lost here."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def frame_recovered(self) -> None:
        self._metrics.frames_recovered.inc()
        self._metrics.frames_lost.inc()

    def frame_concealed(self) -> None:
        self._metrics.frames_concealed.inc()
        self._metrics.frames_lost.inc()

    def frame_dropped(self) -> None:
        self._metrics.frames_dropped.inc()

    def packet_late(self) -> None:
        self._metrics.packets_late.inc()
