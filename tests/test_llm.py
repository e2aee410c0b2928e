"""``OllamaChat.stream`` alone: what its per-step deadline must not do to a cancellation.
(Against the test Ollama over HTTP: tests/test_conversation.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import ollama
import pytest

from gateway.conversation.llm import LLMSettings, OllamaChat


class HeldChunks:
    """Ollama's stream of answer lines, each one let through by the test."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.waiting = asyncio.Event()

    def __aiter__(self) -> HeldChunks:
        return self

    async def __anext__(self) -> ollama.ChatResponse:
        self.waiting.set()
        await self.arrived.wait()
        self.arrived.clear()
        return ollama.ChatResponse(
            model="m", message=ollama.Message(role="assistant", content="piece"), done=False
        )

    async def aclose(self) -> None:
        return None


async def test_a_barge_in_as_a_piece_arrives_stops_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The piece and the cancel in the same turn of the loop: the cancel wins (asyncio's
    wait_for on 3.11 returned the piece instead, and the cancelled reply streamed on)."""
    chat = OllamaChat(LLMSettings(host="http://127.0.0.1:9", model="m"))
    chunks = HeldChunks()

    async def stream(**_: Any) -> HeldChunks:
        return chunks

    monkeypatch.setattr(chat._client, "chat", stream)
    got: list[str] = []

    async def consume() -> None:
        async for piece in chat.stream([{"role": "user", "content": "hi"}]):
            got.append(piece)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(chunks.waiting.wait(), 5)
    chunks.arrived.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    try:
        assert task.cancelled(), f"the answer went on after its cancel: {got}"
    finally:
        task.cancel()
        await chat.close()
