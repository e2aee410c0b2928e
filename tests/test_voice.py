"""The voice pipeline's bounds, fed endpointer events directly, with a recogniser that
blocks until the test lets it go: when ASR falls behind, the oldest speech is dropped,
counted and reported, and what was kept is still transcribed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection

from gateway.conversation.dialogue import Conversation, ConversationSettings
from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.llm import LLMSettings, OllamaChat
from gateway.conversation.voice import UTTERANCE_QUEUE_LIMIT, VoicePipeline
from gateway.ops.metrics import Metrics
from gateway.testing.ollama_server import FakeOllama
from media import Float32Array
from media.asr.base import Segment, Transcription, transcribe_each
from media.asr.service import ASRService
from media.endpointer import EndpointerSettings, SpeechEnded, SpeechStarted
from media.listener import AudioListener
from media.vad import SileroModel, VadBatcher
from signalling.lifecycle import SessionLimits
from signalling.session import Session
from tests.test_asr_service import GatedEngine
from tests.test_sessions import StalledTransport

SECOND = np.zeros(16_000, dtype=np.float32)


async def test_asr_backlog_drops_the_oldest_utterance_and_says_so() -> None:
    transport = StalledTransport()
    transport.release.set()  # a client that reads everything
    session = Session("s1", transport)
    metrics = Metrics()
    llm = OllamaChat(LLMSettings(host="http://127.0.0.1:9", connect_timeout_s=0.5))
    conversation = Conversation(session, llm, metrics, ConversationSettings(system_prompt=""))
    engine = GatedEngine()
    asr = ASRService(engine)
    vad = VadBatcher(SileroModel())
    pc = RTCPeerConnection()
    voice = VoicePipeline(session, pc, conversation, asr, vad, EndpointerSettings(), metrics)
    session.start(SessionLimits())
    voice.start()
    try:
        turns = UTTERANCE_QUEUE_LIMIT + 2  # one in the recogniser, a full queue, one more
        for n in range(turns):
            start = n * 32_000
            voice.on_vad_event(SpeechStarted(start))
            voice.on_vad_event(SpeechEnded(SECOND, start, start + 16_000, "silence"))
            await asyncio.sleep(0.05)  # the transcriber takes the first into the recogniser
        assert metrics.registry.get_sample_value("gateway_utterances_dropped_total") == 1
        engine.release.set()
        for _ in range(200):
            finals = [t for t in transport.written if '"transcript.final"' in t]
            if len(finals) == turns - 1:
                break
            await asyncio.sleep(0.02)
        events = [json.loads(t) for t in transport.written]
        errors = [e for e in events if e["type"] == "error"]
        assert errors[0]["code"] == "asr_backlog"
        assert errors[0]["retryable"] is True
        finals = [e["utterance_id"] for e in events if e["type"] == "transcript.final"]
        assert finals == ["u1", "u3", "u4", "u5", "u6"]  # u2, the oldest waiting, was dropped
    finally:
        await session.close("client")
        vad.close()
        await asr.close()
        await llm.close()
        await pc.close()


class FakeVoice:
    """A speaker that is always speaking; records holds and cuts."""

    engine = "fake"
    voice = "fake"
    speaking = True

    def __init__(self) -> None:
        self.holds: list[bool] = []
        self.cuts = 0

    def begin(self, reply_id: str, times: object) -> None: ...

    def add(self, reply_id: str, delta: str) -> None: ...

    def finish(self, reply_id: str) -> None: ...

    def cut(self) -> tuple[str, str] | None:
        self.cuts += 1
        return None

    def timings(self, reply_id: str) -> dict[str, float]:
        return {}

    def choose_voice(self, voice: str) -> None: ...

    def hold(self, on: bool) -> None:
        self.holds.append(on)


async def speak_over(chunks: list[float]) -> tuple[FakeVoice, list[str], Metrics]:
    """Feed Silero probabilities (one per 32 ms chunk, in real time) to a pipeline whose
    session is speaking; returns the voice, the events sent and the metrics."""
    transport = StalledTransport()
    transport.release.set()
    session = Session("s1", transport)
    metrics = Metrics()
    llm = OllamaChat(LLMSettings(host="http://127.0.0.1:9", connect_timeout_s=0.5))
    conversation = Conversation(session, llm, metrics, ConversationSettings(system_prompt=""))
    fake = FakeVoice()
    conversation.voice = fake
    vad = VadBatcher(SileroModel())
    pc = RTCPeerConnection()
    settings = EndpointerSettings()
    engine = GatedEngine()
    engine.release.set()  # transcribes at once: only the turns matter here
    asr = ASRService(engine)
    voice = VoicePipeline(session, pc, conversation, asr, vad, settings, metrics)
    voice.speak_with(fake, barge_in_min_ms=300)
    listener = AudioListener(vad, settings, voice.on_vad_event)
    voice._listener = listener  # the seam: drive its endpointer by hand
    session.start(SessionLimits())
    try:
        chunk = np.zeros(512, dtype=np.float32)
        for probability in chunks:
            voice._on_probability(probability)
            for event in listener.endpointer.process(chunk, probability):
                voice.on_vad_event(event)
            await asyncio.sleep(0.032)
        await asyncio.sleep(0.1)
        return fake, [json.loads(t)["type"] for t in transport.written], metrics
    finally:
        await session.close("client")
        vad.close()
        await asr.close()
        await llm.close()
        await pc.close()


async def test_a_cough_while_the_gateway_speaks_holds_the_voice_but_does_not_cut_it() -> None:
    # 192 ms of voice (past min_speech_ms, short of --barge-in-min-ms), then quiet.
    fake, events, metrics = await speak_over([0.9] * 6 + [0.1] * 22)
    assert fake.holds[0] is True  # held at the first voiced chunk
    assert fake.holds[-1] is False  # and released
    assert fake.cuts == 0
    assert "speech.started" not in events
    assert metrics.registry.get_sample_value("gateway_barge_ins_total", {"outcome": "ignored"}) == 1


async def test_speech_while_the_gateway_speaks_cuts_it() -> None:
    fake, events, metrics = await speak_over([0.9] * 20 + [0.1] * 20)
    assert fake.holds[0] is True
    assert fake.cuts >= 1
    assert "speech.started" in events
    assert (
        metrics.registry.get_sample_value("gateway_barge_ins_total", {"outcome": "interrupted"})
        == 1
    )


class SaidEngine:
    """A recogniser that hears ``text`` in anything longer than ``min_samples``."""

    name = "said"
    model = "none"
    device = "cpu"
    languages = frozenset({"en"})

    def __init__(self, text: str) -> None:
        self.text = text

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        return Transcription((Segment(self.text, -0.1, 0.0),))

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        return transcribe_each(self, audios, language)


async def judged_turn(
    said: str, chunks: list[float], ollama: tuple[FakeOllama, str]
) -> tuple[list[dict[str, Any]], Metrics]:
    """Probabilities (one per 32 ms chunk, in real time) into a text-judged pipeline whose
    recogniser hears ``said``; the Ollama-compatible server answers. → events, metrics."""
    state, url = ollama
    state.first_token_delay_s = 0.05
    transport = StalledTransport()
    transport.release.set()
    session = Session("s1", transport)
    metrics = Metrics()
    llm = OllamaChat(LLMSettings(host=url))
    conversation = Conversation(session, llm, metrics, ConversationSettings(system_prompt=""))
    vad = VadBatcher(SileroModel())
    pc = RTCPeerConnection()
    settings = EndpointerSettings(silence_ms=1000, pause_ms=200)
    asr = ASRService(SaidEngine(said))
    judge = TurnJudge("text")
    voice = VoicePipeline(
        session, pc, conversation, asr, vad, settings, metrics, judge=judge, likely_silence_ms=500
    )
    listener = AudioListener(vad, settings, voice.on_vad_event)
    voice._listener = listener  # the seam: drive its endpointer by hand
    session.start(SessionLimits())
    voice.start()
    try:
        chunk = np.zeros(512, dtype=np.float32)
        for probability in chunks:
            for event in listener.endpointer.process(chunk, probability):
                voice.on_vad_event(event)
            await asyncio.sleep(0.032)
        await asyncio.sleep(0.5)
        return [json.loads(t) for t in transport.written], metrics
    finally:
        await session.close("client")
        vad.close()
        await asr.close()
        await llm.close()
        await pc.close()
        await judge.close()


def preempted(metrics: Metrics, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_preemptive_replies_total", {"outcome": outcome}
    )


async def test_a_probable_end_answers_early_and_ends_after_the_likely_silence(
    ollama: tuple[FakeOllama, str],
) -> None:
    # No closing punctuation: probably finished. 1 s of speech, then 0.8 s of quiet.
    events, metrics = await judged_turn("what time is it", [0.9] * 30 + [0.1] * 25, ollama)
    kinds = [e["type"] for e in events]
    stopped = next(e for e in events if e["type"] == "speech.stopped")
    assert stopped["end_of_turn"] == "text"
    # The held answer shows only after the final, whole.
    assert kinds.index("transcript.final") < kinds.index("reply.started")
    done = next(e for e in events if e["type"] == "reply.done")
    assert done["text"] == "You said: what time is it. That is all."
    assert preempted(metrics, "used") == 1
    assert ollama[0].calls["POST /api/chat"] == 1


async def test_going_on_after_a_probable_end_withdraws_the_answer(
    ollama: tuple[FakeOllama, str],
) -> None:
    # A 450 ms pause (judged "probably finished", the answer starts), then more speech.
    chunks = [0.9] * 30 + [0.1] * 14 + [0.9] * 20 + [0.1] * 40
    events, metrics = await judged_turn("what time is it", chunks, ollama)
    kinds = [e["type"] for e in events]
    assert kinds.count("speech.stopped") == 1  # one turn
    assert kinds.count("reply.started") == 1  # the answer to the whole of it
    assert preempted(metrics, "wasted") == 1
    assert preempted(metrics, "used") == 1  # the second pause's answer was the one
