"""The per-session event log behind ``Last-Event-ID``: numbering, bounds, replay, ids."""

from __future__ import annotations

import pytest

from signalling.eventlog import MAX_ID_DIGITS, EventLog, Replay, parse_event_id


def seqs(replay: Replay) -> list[int]:
    return [entry.seq for entry in replay.entries]


def test_events_are_numbered_from_one() -> None:
    log = EventLog()
    assert log.last_seq == 0
    first = log.append("session.ready", "{}")
    second = log.append("pong", '{"type":"pong"}')
    assert (first.seq, first.type, first.text) == (1, "session.ready", "{}")
    assert second.seq == 2
    assert log.last_seq == 2


def test_replay_after_an_id_gives_what_followed_it() -> None:
    log = EventLog()
    for i in range(5):
        log.append("e", str(i))
    assert seqs(log.replay(0)) == [1, 2, 3, 4, 5]
    assert seqs(log.replay(3)) == [4, 5]
    assert log.replay(5) == Replay((), 0)
    assert log.replay(3).missed == 0


def test_the_oldest_go_first_beyond_the_count_and_missed_says_how_many() -> None:
    log = EventLog(max_events=3)
    for i in range(10):
        log.append("e", str(i))
    assert len(log) == 3
    assert seqs(log.replay(0)) == [8, 9, 10]
    assert log.replay(0).missed == 7  # 1..7 are gone
    assert log.replay(5).missed == 2  # 6 and 7 are gone
    assert log.replay(7).missed == 0  # nothing after 7 is gone
    assert seqs(log.replay(9)) == [10]


def test_the_character_bound_keeps_the_newest_even_alone() -> None:
    log = EventLog(max_events=100, max_chars=10)
    log.append("a", "12345")
    log.append("b", "12345")
    assert len(log) == 2  # exactly at the bound
    log.append("c", "1")
    assert seqs(log.replay(0)) == [2, 3]
    big = log.append("d", "x" * 50)  # over the bound by itself: kept, alone
    assert log.replay(0).entries == (big,)
    assert log.replay(0).missed == 3


@pytest.mark.parametrize("after", [-1, 3])
def test_an_id_the_log_never_gave_is_refused(after: int) -> None:
    log = EventLog()
    log.append("e", "1")
    log.append("e", "2")
    with pytest.raises(ValueError, match="not one of this session's"):
        log.replay(after)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_events"):
        EventLog(max_events=0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("  ", None), ("0", 0), ("17", 17), (" 42 ", 42)],
)
def test_last_event_id_parses(header: str | None, expected: int | None) -> None:
    assert parse_event_id(header) == expected


@pytest.mark.parametrize("header", ["-1", "1.5", "abc", "0x10", "1 2", "9" * (MAX_ID_DIGITS + 1)])
def test_last_event_id_that_is_not_ours_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match="Last-Event-ID must be an event number"):
        parse_event_id(header)
