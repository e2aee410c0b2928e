from __future__ import annotations

import asyncio

import pytest

from signalling.tasks import TaskOwner


async def test_cancel_all_cancels_and_awaits_every_task() -> None:
    owner = TaskOwner("s1")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = owner.spawn(forever(), "forever")
    await started.wait()
    await owner.cancel_all()
    assert task.cancelled()
    assert len(owner) == 0


async def test_a_task_spawned_while_closing_never_runs() -> None:
    owner = TaskOwner("s1")
    ran: list[str] = []

    async def work() -> None:
        ran.append("ran")

    await owner.cancel_all()
    task = owner.spawn(work(), "late")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == []


async def test_a_failing_task_is_logged_with_its_owner(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("s1")

    async def boom() -> None:
        raise ValueError("broken")

    task = owner.spawn(boom(), "boom")
    await asyncio.wait([task])
    await asyncio.sleep(0)  # the done callback runs on the next loop turn
    assert "[s1] task s1:boom failed" in caplog.text
    assert len(owner) == 0
