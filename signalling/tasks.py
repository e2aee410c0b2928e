"""Owned tasks: every task a session starts is named, its failure logged, and on close it
is cancelled and awaited (bounded). Once closing, new tasks are cancelled at birth, so a
late callback cannot start work that outlives its session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0


class TaskOwner:
    def __init__(self, owner_id: str) -> None:
        self.owner_id = owner_id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner_id}:{name}")
        if self._closing:
            task.cancel()  # runs no code of the coroutine: it is cancelled before its start
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("[%s] task %s failed", self.owner_id, task.get_name(), exc_info=exc)

    async def cancel_all(self, timeout_s: float = CANCEL_TIMEOUT_S) -> None:
        """Cancel every task but the caller, and wait for them (at most ``timeout_s``)."""
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            logger.error("[%s] task %s ignored cancellation", self.owner_id, task.get_name())
