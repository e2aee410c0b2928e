"""The media benchmark's arithmetic for ``serve --workers 2`` (``bench/media.py``,
``bench/proctree.py``): a process tree's CPU from ``/proc`` text, UDP drops of its sockets,
the front's merged ``/metrics`` summed over workers, and issue 12's verdict."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest

from bench import proctree
from bench.media import (
    FRAME_S,
    Row,
    _servers,
    metrics_by_worker,
    parse_metrics,
    summarise,
    worker_deltas,
    workers_verdict,
)
from bench.proctree import descendants, parse_udp_table, process_name
from gateway.ops.procstat import CLOCK_TICKS, ProcStat, parse_stat, read_stat

# pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
STAT = "4242 (python (w1) x) S 4200 4200 4200 0 -1 4194560 9 0 0 0 150 50 0 0 20 0 3 0"


def test_parse_stat_reads_ppid_and_cpu_past_a_name_with_parens() -> None:
    assert parse_stat(STAT) == ProcStat(4242, 4200, 200, "S")
    assert parse_stat("garbage") is None
    assert parse_stat("1 (init) S") is None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_read_stat_reads_this_process_and_not_a_missing_one() -> None:
    reading = read_stat("self")
    assert reading is not None
    assert (reading.pid, reading.ppid, reading.state) == (os.getpid(), os.getppid(), "R")
    assert read_stat(2**22 + 1) is None  # above Linux's pid_max


def test_descendants_are_the_whole_tree_and_nothing_else() -> None:
    stats = [
        ProcStat(1, 0, 0),
        ProcStat(100, 1, 0),  # the front
        ProcStat(101, 100, 0),  # asr-server
        ProcStat(102, 100, 0),  # w1
        ProcStat(103, 100, 0),  # w2
        ProcStat(110, 103, 0),  # a grandchild
        ProcStat(200, 1, 0),  # someone else's
    ]
    assert descendants(stats, 100) == [100, 101, 102, 103, 110]
    assert descendants(stats, 999) == [999]


def test_tree_cpu_sums_by_process_name() -> None:
    ticks = CLOCK_TICKS
    front = ["python", "-m", "gateway", "serve", "--workers", "2"]
    worker = [*front, "--workers", "1", "--worker-id", "w2", "--worker-socket", "/x"]
    asr = ["python", "-m", "gateway", "asr-server", "--socket", "/y"]
    assert process_name(front, root=True) == "front"
    assert process_name(worker, root=False) == "w2"
    assert process_name(asr, root=False) == "asr-server"
    assert process_name(["/usr/bin/sh"], root=False) == "sh"
    by_name = proctree.sum_by_name([("w1", 1.0), ("w1", 0.5), ("front", 0.25)])
    assert by_name == {"w1": 1.5, "front": 0.25}
    assert ProcStat(1, 0, 3 * ticks).cpu_s == pytest.approx(3.0)
    assert proctree.deltas({"w1": 1.0, "gone": 5.0}, {"w1": 4.0, "new": 1.0}) == {"w1": 3.0}


def test_udp_drops_of_the_trees_sockets_only() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  1: 0100007F:C350 00000000:0000 07 00000000:00000400 00:00000000 00000000  1000 "
        "0 5555 2 0000000000000000 7\n"
        "  2: 0100007F:C351 00000000:0000 07 00000000:00000100 00:00000000 00000000  1000 "
        "0 6666 2 0000000000000000 3\n"
        "  3: 0100007F:C352 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 "
        "0 7777 2 0000000000000000 100\n"
    )
    assert parse_udp_table(table, {"5555", "6666"}) == (10, 0x500)
    assert parse_udp_table(table, set()) == (0, 0)


def test_this_process_tree_reads_on_linux() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc")
    sample = proctree.sample_tree(os.getpid())
    assert sample.pids[0] == os.getpid()
    assert sample.total_cpu_s > 0
    assert "front" in sample.main_thread_cpu_s


FRONT_METRICS = """\
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.0
# TYPE gateway_audio_frames_received_total counter
gateway_audio_frames_received_total{worker="w1"} 1000.0
gateway_audio_frames_received_total{worker="w2"} 900.0
# TYPE gateway_audio_frames_lost_total counter
gateway_audio_frames_lost_total{worker="w1"} 2.0
gateway_audio_frames_lost_total{worker="w2"} 1.0
# TYPE gateway_sessions_active gauge
gateway_sessions_active{worker="w1"} 50.0
gateway_sessions_active{worker="w2"} 49.0
# TYPE gateway_event_loop_lag_seconds gauge
gateway_event_loop_lag_seconds{worker="w1"} 0.004
gateway_event_loop_lag_seconds{worker="w2"} 0.02
"""


def test_front_metrics_are_summed_over_workers_with_the_worst_loop_lag() -> None:
    total = parse_metrics(FRONT_METRICS)
    assert total["frames_received"] == 1900
    assert total["frames_lost"] == 3
    assert total["sessions"] == 99
    assert total["loop_lag_s"] == pytest.approx(0.02)
    assert total["utterances"] == 0
    by_worker = metrics_by_worker(FRONT_METRICS)
    assert set(by_worker) == {"w1", "w2"}
    assert by_worker["w2"]["frames_received"] == 900
    # One process's metrics have no worker label: the same totals as before.
    single = "# TYPE gateway_sessions_active gauge\ngateway_sessions_active 3.0\n"
    assert metrics_by_worker(single) == {"": {**dict.fromkeys(total, 0.0), "sessions": 3.0}}
    assert parse_metrics(single)["sessions"] == 3


def test_worker_deltas() -> None:
    first = metrics_by_worker(FRONT_METRICS)
    last = metrics_by_worker(FRONT_METRICS.replace("} 1000.0", "} 1500.0"))
    deltas = worker_deltas(first, last)
    assert deltas["w1"] == {"frames_received": 500, "frames_lost": 0, "sessions": 50}
    assert deltas["w2"]["frames_received"] == 0


def test_servers_option() -> None:
    assert _servers("workers2,baseline") == ("baseline", "workers2")
    assert _servers("both") == ("baseline", "gateway")
    with pytest.raises(argparse.ArgumentTypeError):
        _servers("gateway,nope")


def _row(server: Any, lost: int = 0, per_worker: int = 50, drops: int = 0) -> Row:
    frames = round(20.0 / FRAME_S)  # a 20 s window
    row = Row(
        100,
        server,
        connected=100,
        window_s=20.0,
        server_cpu_s=10.0,
        frames_expected=100 * frames,
        frames_sent=100 * frames,
        frames_received=100 * frames,
        frames_lost=lost,
        udp_drops=drops,
        sessions=100,
    )
    if server == "workers2":
        row.by_worker = {
            "w1": {"frames_received": per_worker * frames, "frames_lost": 0, "sessions": 50},
            "w2": {"frames_received": 50 * frames, "frames_lost": lost, "sessions": 50},
        }
    return row


def test_workers_verdict() -> None:
    assert workers_verdict(summarise([_row("gateway")], 2)).endswith("not measured")
    met = workers_verdict(summarise([_row("workers2"), _row("gateway", lost=40)], 2))
    assert ": met — 0 lost" in met
    assert "(w1 50, w2 50)" in met
    assert "--workers 1: 40 lost" in met
    assert ": missed" in workers_verdict(summarise([_row("workers2", lost=1)], 2))
    assert ": missed" in workers_verdict(summarise([_row("workers2", drops=5)], 2))
    slow = workers_verdict(summarise([_row("workers2", per_worker=40)], 2))
    assert ": missed" in slow
    assert "w1 fell behind" in slow
