"""An extra reader of a session's events: bounded like the outbox, never blocking the
session, ending with what was queued."""

from __future__ import annotations

import asyncio
import time

from signalling.eventlog import Entry
from signalling.subscribers import Subscription


def entry(seq: int, kind: str = "reply.delta") -> Entry:
    return Entry(seq, kind, f'{{"type":"{kind}","n":{seq}}}')


async def test_events_come_out_in_order_with_their_numbers() -> None:
    subscription = Subscription()
    subscription.push(entry(1, "session.ready"))
    subscription.push(entry(2))
    first = await subscription.next(1.0)
    second = await subscription.next(1.0)
    assert first is not None
    assert (first.seq, first.type) == (1, "session.ready")
    assert second is not None
    assert second.seq == 2


async def test_nothing_within_the_timeout_is_none() -> None:
    subscription = Subscription()
    started = time.monotonic()
    assert await subscription.next(0.05) is None
    assert 0.04 <= time.monotonic() - started < 1.0
    assert not subscription.finished


async def test_a_waiting_reader_wakes_for_a_push() -> None:
    subscription = Subscription()
    waiting = asyncio.ensure_future(subscription.next(5.0))
    await asyncio.sleep(0.01)
    subscription.push(entry(7))
    item = await asyncio.wait_for(waiting, 1.0)
    assert item is not None
    assert item.seq == 7


async def test_a_reader_that_stops_reading_is_bounded_and_keeps_what_matters() -> None:
    subscription = Subscription(limit=8)
    subscription.push(entry(1, "reply.started"))
    for seq in range(2, 1000):
        subscription.push(entry(seq))  # never blocks
    subscription.push(entry(1000, "reply.done"))
    assert len(subscription) == 8
    assert subscription.dropped == 1000 - 8
    kinds = []
    while (item := await subscription.next(0.01)) is not None:
        kinds.append(item.type)
    assert kinds[0] == "reply.started"
    assert kinds[-1] == "reply.done"


async def test_after_the_end_the_queue_drains_then_it_is_finished() -> None:
    subscription = Subscription()
    subscription.push(entry(1))
    subscription.push(entry(2, "session.ended"))
    subscription.end()
    subscription.push(entry(3))  # after the end: ignored
    assert not subscription.finished
    assert (await subscription.next(1.0)) is not None
    last = await subscription.next(1.0)
    assert last is not None
    assert last.type == "session.ended"
    assert subscription.finished
    started = time.monotonic()
    assert await subscription.next(5.0) is None  # at once: nothing more will come
    assert time.monotonic() - started < 0.5


async def test_end_wakes_a_waiting_reader() -> None:
    subscription = Subscription()
    waiting = asyncio.ensure_future(subscription.next(5.0))
    await asyncio.sleep(0.01)
    subscription.end()
    assert await asyncio.wait_for(waiting, 1.0) is None
    assert subscription.finished
