"""The receive path's reorder buffer (media.jitter), exactly: no I/O, time passed in."""

from __future__ import annotations

import random

import pytest

from media.jitter import (
    DEPTH,
    Decoded,
    Event,
    Filled,
    Lost,
    Packet,
    ReorderBuffer,
    Skipped,
)
from media.listener import JITTER_PREFETCH_FRAMES

FRAME = 960


def packet(seq: int, *, start: int = 0, ts: int | None = None, samples: int = FRAME) -> Packet:
    """Packet ``seq`` of a stream whose first sequence number is ``start`` (wrapping)."""
    timestamp = (seq - start) * FRAME if ts is None else ts
    return Packet(seq % 0x10000, timestamp % 0x1_0000_0000, samples, f"p{seq}".encode())


def push_all(buffer: ReorderBuffer, seqs: list[int], now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for seq in seqs:
        events += buffer.push(packet(seq), now)
    return events


def kinds(events: list[Event]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, Decoded):
            out.append(e.payload.decode())
        elif isinstance(e, Lost):
            out.append(f"lost({e.fec.decode() if e.fec else None})")
        else:
            out.append(type(e).__name__)
    return out


def assert_continuous(events: list[Event], start: int = 0) -> int:
    pts = start
    for e in events:
        assert e.pts == pts, (e, pts)
        pts += e.samples
    return pts


def test_depth_is_what_the_listener_takes_out_of_the_arrival_clock() -> None:
    assert DEPTH == JITTER_PREFETCH_FRAMES


def test_in_order_frames_come_out_once_depth_newer_packets_are_in() -> None:
    buffer = ReorderBuffer(depth=4)
    assert push_all(buffer, [0, 1, 2, 3]) == []
    assert buffer.held == 4
    assert kinds(buffer.push(packet(4), 0.0)) == ["p0"]
    assert kinds(buffer.push(packet(5), 0.0)) == ["p1"]
    rest = buffer.flush()
    assert kinds(rest) == ["p2", "p3", "p4", "p5"]
    assert buffer.held == 0
    assert buffer.stats.lost == 0


def test_a_reordered_packet_takes_its_place() -> None:
    buffer = ReorderBuffer(depth=4)
    events = push_all(buffer, [0, 1, 3, 2, 4, 6, 5, 7, 8]) + buffer.flush()
    assert kinds(events) == [f"p{i}" for i in range(9)]
    assert_continuous(events)


def test_a_lost_frame_comes_with_the_next_packet_for_its_fec() -> None:
    buffer = ReorderBuffer(depth=4)
    events = push_all(buffer, [0, 1, 3, 4, 5])
    assert kinds(events) == ["p0", "p1"]
    lost = buffer.push(packet(6), 0.0)  # frame 2 is due: 4 newer packets are in
    assert lost == [Lost(2 * FRAME, FRAME, b"p3")]
    events += lost + buffer.push(packet(7), 0.0)
    assert kinds(events) == ["p0", "p1", "lost(p3)", "p3"]
    assert_continuous(events)
    assert buffer.stats.lost == 1


def test_a_burst_conceals_all_but_the_last_which_fec_can_rebuild() -> None:
    buffer = ReorderBuffer(depth=4)
    events = push_all(buffer, [0, 1, 5, 6, 7, 8, 9]) + buffer.flush()
    assert kinds(events) == ["p0", "p1", "lost(None)", "lost(None)", "lost(p5)"] + [
        f"p{i}" for i in range(5, 10)
    ]
    assert_continuous(events)


def test_a_burst_adds_no_delay() -> None:
    """Everything due comes out at once: nothing is held beyond ``depth`` after a loss."""
    buffer = ReorderBuffer(depth=4)
    push_all(buffer, [0, 1, 2])
    events = push_all(buffer, [10, 11, 12, 13])
    assert kinds(events)[:3] == ["p0", "p1", "p2"]
    assert buffer.held == 4  # 10..13: the gap 3..9 is settled
    assert kinds(buffer.push(packet(14), 0.0)) == ["p10"]


def test_sequence_and_timestamp_wrap_around() -> None:
    start = 0xFFFE
    ts0 = 0xFFFF_FFFF - FRAME  # the timestamp wraps at the third packet
    buffer = ReorderBuffer(depth=2)

    def wrapped(i: int) -> Packet:
        return packet(start + i, start=start, ts=ts0 + i * FRAME)

    events: list[Event] = []
    for i in (0, 1, 3, 4, 5, 6):  # sequence 0xFFFE, 0xFFFF, (0 lost), 1, 2, 3
        events += buffer.push(wrapped(i), 0.0)
    events += buffer.flush()
    assert [type(e).__name__ for e in events] == ["Decoded"] * 2 + ["Lost"] + ["Decoded"] * 4
    lost = events[2]
    assert isinstance(lost, Lost)
    assert lost.fec == wrapped(3).payload
    assert_continuous(events)
    assert not any(isinstance(e, Filled | Skipped) for e in events)


def test_duplicates_are_dropped_whether_held_or_already_out() -> None:
    buffer = ReorderBuffer(depth=2)
    events = push_all(buffer, [0, 1, 1, 2, 3, 0, 4]) + buffer.flush()
    assert kinds(events) == ["p0", "p1", "p2", "p3", "p4"]
    assert buffer.stats.duplicates == 2
    assert buffer.stats.late == 0


def test_a_packet_later_than_the_window_is_dropped_and_counted_late() -> None:
    buffer = ReorderBuffer(depth=2)
    events = push_all(buffer, [0, 2, 3])  # frame 1 is declared lost at 3
    assert kinds(events) == ["p0", "lost(p2)"]
    assert buffer.push(packet(1), 0.0) == []
    assert buffer.stats.late == 1
    events += buffer.flush()
    assert kinds(events) == ["p0", "lost(p2)", "p2", "p3"]


def test_a_packet_reordered_before_the_first_one_is_kept() -> None:
    buffer = ReorderBuffer(depth=4)
    events = push_all(buffer, [11, 10, 12]) + buffer.flush()
    assert kinds(events) == ["p10", "p11", "p12"]


def test_a_big_jump_in_sequence_is_a_restart_and_its_timestamp_gap_a_skip() -> None:
    buffer = ReorderBuffer(depth=2)
    events = push_all(buffer, [0, 1, 2])
    events += buffer.push(packet(1000), 0.0)  # 20 s later on the same clock
    assert buffer.stats.restarts == 1
    events += push_all(buffer, [1001, 1002]) + buffer.flush()
    assert kinds(events) == ["p0", "p1", "p2", "Skipped", "p1000", "p1001", "p1002"]
    skipped = events[3]
    assert isinstance(skipped, Skipped)
    assert skipped.samples == 997 * FRAME
    assert_continuous(events)


def test_a_new_source_starts_a_new_stream_on_the_same_timeline() -> None:
    buffer = ReorderBuffer(depth=2)
    events: list[Event] = []
    for seq in (0, 1, 2):
        events += buffer.push(packet(seq), 0.0, source=1)
    for seq in (5000, 5001, 5002):  # a restarted sender: new SSRC, sequence and clock
        events += buffer.push(packet(seq, ts=123_456 + seq * FRAME), 0.0, source=2)
    events += buffer.flush()
    assert kinds(events) == ["p0", "p1", "p2", "p5000", "p5001", "p5002"]
    assert buffer.stats.restarts == 1
    assert_continuous(events)


def test_a_far_backward_jump_is_a_restart_too() -> None:
    buffer = ReorderBuffer(depth=2, max_misorder=10)
    push_all(buffer, [500, 501, 502])
    buffer.push(packet(100), 0.0)
    assert buffer.stats.restarts == 1


def test_a_timestamp_gap_without_loss_is_filled() -> None:
    """DTX: the sender sends nothing during silence, and its clock goes on."""
    buffer = ReorderBuffer(depth=1)
    events = buffer.push(packet(0, ts=0), 0.0)
    events += buffer.push(packet(1, ts=FRAME), 0.0)
    events += buffer.push(packet(2, ts=2 * FRAME + 2500), 0.0)  # 2500 samples unsent
    events += buffer.flush()
    fills = [e for e in events if isinstance(e, Filled)]
    assert [e.samples for e in fills] == [960, 960, 480]  # 2.5 ms units: 100 left over
    assert kinds(events)[-1] == "p2"
    assert_continuous(events)
    assert buffer.stats.lost == 0


def test_a_long_timestamp_gap_is_skipped() -> None:
    buffer = ReorderBuffer(depth=1)
    events = buffer.push(packet(0, ts=0), 0.0)
    events += buffer.push(packet(1, ts=5 * 48_000), 0.0) + buffer.flush()
    assert kinds(events) == ["p0", "Skipped", "p1"]
    assert events[1].samples == 5 * 48_000 - FRAME
    assert_continuous(events)


def test_nothing_arriving_releases_what_is_held() -> None:
    buffer = ReorderBuffer(depth=4, flush_after_s=0.12)
    assert buffer.deadline() is None
    buffer.push(packet(0), 1.0)
    buffer.push(packet(2), 1.02)
    assert buffer.deadline() == pytest.approx(1.14)
    assert buffer.poll(1.13) == []
    events = buffer.poll(1.15)
    assert kinds(events) == ["p0", "lost(p2)", "p2"]
    assert buffer.deadline() is None
    # The stream resumes where it left off.
    assert push_all(buffer, [3, 4, 5, 6, 7], now=2.0) == [Decoded(3 * FRAME, FRAME, b"p3")]


def test_a_packet_that_is_not_opus_counts_as_lost() -> None:
    buffer = ReorderBuffer(depth=2)
    events = buffer.push(packet(0), 0.0)
    events += buffer.push(Packet(1, FRAME, -1, b"\xff"), 0.0)
    events += push_all(buffer, [2, 3]) + buffer.flush()
    assert kinds(events) == ["p0", "lost(p2)", "p2", "p3"]
    assert buffer.stats.invalid == 1


def test_other_frame_durations() -> None:
    """A lost frame lasts as long as the one before it (senders keep their ptime)."""
    buffer = ReorderBuffer(depth=2)
    events: list[Event] = []
    for seq in (0, 1, 3, 4, 5):
        events += buffer.push(Packet(seq, seq * 2880, 2880, b"x"), 0.0)
    events += buffer.flush()
    assert [e.samples for e in events] == [2880] * 6
    assert_continuous(events)
    assert not any(isinstance(e, Filled | Skipped) for e in events)


@pytest.mark.parametrize("seed", range(5))
def test_random_loss_and_reordering_keep_the_timeline_whole(seed: int) -> None:
    rng = random.Random(seed)
    start = rng.randrange(0x10000)
    count = 2000
    order = list(range(count))
    for i in range(1, count - 1):  # swap neighbours now and then (never the first)
        if rng.random() < 0.05:
            order[i], order[i + 1] = order[i + 1], order[i]
    sent = [i for i in order if i == 0 or i == count - 1 or rng.random() >= 0.1]
    buffer = ReorderBuffer(depth=4)
    events: list[Event] = []
    for i in sent:
        events += buffer.push(packet(start + i, start=start), 0.0)
        assert buffer.held <= 4  # never stalls, never grows
    events += buffer.flush()

    assert assert_continuous(events) == count * FRAME
    assert len(events) == count
    decoded = [e for e in events if isinstance(e, Decoded)]
    assert [e.payload for e in decoded] == [f"p{start + i}".encode() for i in sorted(set(sent))]
    assert buffer.stats.lost == count - len(set(sent))
    assert buffer.stats.late == 0  # a neighbour swap is well within the window


def test_depth_zero_releases_at_once() -> None:
    buffer = ReorderBuffer(depth=0)
    assert kinds(buffer.push(packet(0), 0.0)) == ["p0"]
    assert kinds(buffer.push(packet(2), 0.0)) == ["lost(p2)", "p2"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReorderBuffer(depth=60)
