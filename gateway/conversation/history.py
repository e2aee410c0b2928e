"""A session's conversation history, bounded. Pure: no I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

INTERRUPTED_MARK = " [interrupted by the user]"


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str
    interrupted: bool = False


class History:
    """The last ``max_turns`` exchanges (a user message and the answer to it) before the
    current turn, which is always kept."""

    def __init__(self, max_turns: int) -> None:
        self.max_turns = max_turns
        self._turns: deque[Turn] = deque()

    def __len__(self) -> int:
        return len(self._turns)

    def add_user(self, text: str) -> None:
        # Bounded here: at most 2 * max_turns earlier messages, the new one, and its answer.
        while len(self._turns) > 2 * self.max_turns:
            self._turns.popleft()
        self._turns.append(Turn("user", text))

    def add_assistant(self, text: str, *, interrupted: bool = False) -> None:
        self._turns.append(Turn("assistant", text, interrupted))

    def revise_last_answer(self, text: str, *, interrupted: bool) -> None:
        """Replace the last answer (a spoken one cut short: the person heard only ``text``);
        an answer nobody heard is forgotten."""
        if self._turns and self._turns[-1].role == "assistant":
            self._turns.pop()
            if text:
                self._turns.append(Turn("assistant", text, interrupted))

    def clear(self) -> None:
        self._turns.clear()

    def restore(self, turns: tuple[Turn, ...]) -> None:
        """Continue an earlier session's history (a resumed conversation), bounded as
        ever: its last ``max_turns`` exchanges."""
        self._turns = deque(turns[-2 * self.max_turns :] if self.max_turns else ())

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    def messages(self, system_prompt: str) -> list[dict[str, str]]:
        """Ollama chat messages; an interrupted answer says so, so the model knows the
        person stopped listening there."""
        out = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for turn in self._turns:
            content = turn.content + INTERRUPTED_MARK if turn.interrupted else turn.content
            out.append({"role": turn.role, "content": content})
        return out
