"""Preemptive replies (``Conversation.preempt``): the answer to a probably-finished turn
starts at once through the real ``ollama`` client and an Ollama-compatible server, and is
held unseen until the turn is final; a turn that goes on, or ends with other words, never
shows it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.conversation.dialogue import Conversation, ConversationSettings, TurnTimes
from gateway.conversation.llm import LLMSettings, OllamaChat
from gateway.ops.metrics import Metrics
from signalling.lifecycle import SessionLimits
from signalling.session import Session
from tests.conftest import Ollama
from tests.test_sessions import StalledTransport


class Talk:
    def __init__(self, conversation: Conversation, transport: StalledTransport) -> None:
        self.conversation = conversation
        self.transport = transport

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.transport.written]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events()]

    async def until(self, kind: str, count: int = 1, within: float = 5.0) -> dict[str, Any]:
        """The ``count``-th event of ``kind``, once it has come."""
        for _ in range(round(within / 0.01)):
            found = [e for e in self.events() if e["type"] == kind]
            if len(found) >= count:
                return found[count - 1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind} in {self.types()}")

    def metric(self, outcome: str) -> float | None:
        return self.conversation.metrics.registry.get_sample_value(
            "gateway_preemptive_replies_total", {"outcome": outcome}
        )


@pytest.fixture
async def talk(ollama: Ollama) -> AsyncIterator[Talk]:
    _state, url = ollama
    transport = StalledTransport()
    transport.release.set()
    session = Session("s1", transport)
    llm = OllamaChat(LLMSettings(host=url))
    conversation = Conversation(
        session, llm, Metrics(), ConversationSettings(system_prompt="Be brief.")
    )
    session.start(SessionLimits())
    try:
        yield Talk(conversation, transport)
    finally:
        await session.close("client")
        await llm.close()


def now() -> TurnTimes:
    t = asyncio.get_running_loop().time()
    return TurnTimes(t, t)


async def test_a_confirmed_turn_releases_the_held_answer(talk: Talk, ollama: Ollama) -> None:
    state, _ = ollama
    talk.conversation.preempt("u1", "what time is it")
    for _ in range(300):  # the whole answer arrives, unseen
        if state.calls["POST /api/chat"] and not state.active_streams:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert talk.types() == []
    assert state.requests[-1]["messages"][-1] == {"role": "user", "content": "what time is it"}

    talk.conversation.on_transcript("u1", "what time is it", now())
    done = await talk.until("reply.done")
    assert talk.types() == ["reply.started", "reply.delta", "reply.done"]
    assert talk.events()[1]["text"] == done["text"] == "You said: what time is it. That is all."
    assert talk.events()[0]["utterance_id"] == "u1"
    assert state.calls["POST /api/chat"] == 1  # not asked twice
    assert talk.metric("used") == 1
    # History has the turn and its answer, once.
    assert [t.role for t in talk.conversation.history.turns] == ["user", "assistant"]


async def test_an_answer_still_streaming_at_release_goes_on_live(
    talk: Talk, ollama: Ollama
) -> None:
    state, _ = ollama
    state.token_interval_s = 0.05
    talk.conversation.preempt("u1", "tell me a story")
    await asyncio.sleep(0.2)  # some pieces are in, held
    talk.conversation.on_transcript("u1", "tell me a story", now())
    done = await talk.until("reply.done")
    deltas = [e["text"] for e in talk.events() if e["type"] == "reply.delta"]
    assert len(deltas) > 2  # the held part at once, then piece by piece
    assert "".join(deltas) == done["text"]


async def test_other_words_withdraw_it_and_answer_those(talk: Talk, ollama: Ollama) -> None:
    state, _ = ollama
    state.token_interval_s = 0.05
    talk.conversation.preempt("u1", "what is the weather")
    await asyncio.sleep(0.1)
    talk.conversation.on_transcript("u1", "what is the weather in Paris", now())
    done = await talk.until("reply.done")
    assert done["text"] == "You said: what is the weather in Paris. That is all."
    assert talk.types().count("reply.started") == 1  # the withdrawn one never showed
    assert talk.metric("wasted") == 1
    assert talk.metric("used") is None


async def test_withdrawn_when_the_person_goes_on(talk: Talk, ollama: Ollama) -> None:
    state, _ = ollama
    state.token_interval_s = 0.05
    talk.conversation.preempt("u1", "I would like")
    await asyncio.sleep(0.1)
    talk.conversation.withdraw_preempt()
    for _ in range(300):  # the request itself is cancelled: Ollama sees the client leave
        if state.client_disconnects:
            break
        await asyncio.sleep(0.01)
    assert state.client_disconnects == 1
    assert talk.types() == []
    assert talk.metric("wasted") == 1
    assert len(talk.conversation.history) == 0


async def test_only_one_and_never_over_a_real_reply(talk: Talk, ollama: Ollama) -> None:
    state, _ = ollama
    state.token_interval_s = 0.05
    talk.conversation.start_reply("first question", utterance_id="u1", times=now())
    talk.conversation.preempt("u2", "second question")  # a real reply streams: refused
    await asyncio.sleep(0.05)
    assert state.calls["POST /api/chat"] == 1
    await talk.until("reply.done")
    talk.conversation.preempt("u2", "second question")
    talk.conversation.preempt("u3", "third question")  # one held at a time
    await asyncio.sleep(0.1)
    assert state.calls["POST /api/chat"] == 2
    talk.conversation.withdraw_preempt("u3")  # not the held one: nothing happens
    talk.conversation.on_transcript("u2", "second question", now())
    done = await talk.until("reply.done", count=2)
    assert done["text"] == "You said: second question. That is all."


async def test_a_failed_held_answer_is_silent_and_the_turn_asks_again(
    talk: Talk, ollama: Ollama
) -> None:
    state, _ = ollama
    state.mode = "http_error"
    talk.conversation.preempt("u1", "hello")
    await asyncio.sleep(0.2)
    assert talk.types() == []  # the failure belonged to nobody yet
    state.mode = "normal"
    talk.conversation.on_transcript("u1", "hello", now())
    done = await talk.until("reply.done")
    assert done["text"] == "You said: hello. That is all."
    assert talk.metric("wasted") == 1
