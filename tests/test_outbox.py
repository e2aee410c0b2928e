"""The outbox's drop policy: bounded, and what ends or explains something is kept."""

from __future__ import annotations

import pytest

from signalling.outbox import Outbox


def fill(outbox: Outbox, kinds: list[str]) -> list[str | None]:
    return [outbox.push(kind, f"{kind}#{i}") for i, kind in enumerate(kinds)]


def drain(outbox: Outbox) -> list[str]:
    out = []
    while (item := outbox.pop()) is not None:
        out.append(item.text)
    return out


def test_under_the_limit_nothing_is_dropped_and_order_is_kept() -> None:
    outbox = Outbox(4)
    assert fill(outbox, ["a", "b", "c"]) == [None, None, None]
    assert drain(outbox) == ["a#0", "b#1", "c#2"]
    assert outbox.pop() is None


def test_when_full_the_oldest_droppable_event_goes_first() -> None:
    outbox = Outbox(3)
    fill(outbox, ["reply.started", "reply.delta", "reply.delta"])
    assert outbox.push("reply.done", "done") == "reply.delta"
    assert drain(outbox) == ["reply.started#0", "reply.delta#2", "done"]


def test_reply_done_and_errors_survive_a_flood_of_deltas() -> None:
    outbox = Outbox(8)
    fill(outbox, ["reply.started"] + ["reply.delta"] * 500)
    outbox.push("reply.done", "done")
    outbox.push("error", "error")
    kept = drain(outbox)
    assert len(kept) == 8
    assert kept[0] == "reply.started#0"
    assert kept[-2:] == ["done", "error"]


def test_a_droppable_event_is_refused_when_only_important_ones_are_queued() -> None:
    outbox = Outbox(2)
    fill(outbox, ["error", "reply.done"])
    assert outbox.push("reply.delta", "late") == "reply.delta"
    assert drain(outbox) == ["error#0", "reply.done#1"]


def test_the_bound_holds_even_for_important_events() -> None:
    outbox = Outbox(3)
    dropped = fill(outbox, ["error"] * 10)
    assert len(outbox) == 3
    assert dropped.count("error") == 7
    assert drain(outbox) == ["error#7", "error#8", "error#9"]


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0)
