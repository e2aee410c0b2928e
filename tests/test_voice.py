"""The voice pipeline's bounds, fed endpointer events directly, with a recogniser that
blocks until the test lets it go: when ASR falls behind, the oldest speech is dropped,
counted and reported, and what was kept is still transcribed."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from aiortc import RTCPeerConnection

from gateway.conversation.dialogue import Conversation, ConversationSettings
from gateway.conversation.llm import LLMSettings, OllamaChat
from gateway.conversation.voice import UTTERANCE_QUEUE_LIMIT, VoicePipeline
from gateway.ops.metrics import Metrics
from media.asr.service import ASRService
from media.endpointer import EndpointerSettings, SpeechEnded, SpeechStarted
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
