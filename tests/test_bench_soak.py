"""The soak benchmark's arithmetic (``bench/soak.py``): what it reads from /proc and
/metrics, the quantile of a window of a histogram, slopes, and when it fails its run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from bench.soak import (
    BASELINE_MINUTES,
    JUDGED_MINUTES,
    MetricsSample,
    Minute,
    ProcessSample,
    Turn,
    Verdict,
    bucket_quantile,
    judge,
    minute_row,
    parse_metrics,
    parse_proc_status,
    slope_per_hour,
)

METRICS = """\
# TYPE gateway_asyncio_tasks gauge
gateway_asyncio_tasks 17.0
# TYPE gateway_sessions_active gauge
gateway_sessions_active 2.0
# TYPE gateway_event_loop_delay_seconds histogram
gateway_event_loop_delay_seconds_bucket{le="0.001"} 90.0
gateway_event_loop_delay_seconds_bucket{le="0.01"} 99.0
gateway_event_loop_delay_seconds_bucket{le="+Inf"} 100.0
gateway_event_loop_delay_seconds_sum 0.2
gateway_event_loop_delay_seconds_count 100.0
"""


def test_reads_rss_and_threads_from_proc_status() -> None:
    text = "Name:\tpython\nVmRSS:\t  734208 kB\nThreads:\t26\n"
    assert parse_proc_status(text) == (717.0, 26)


def test_reads_tasks_sessions_and_the_loop_histogram() -> None:
    sample = parse_metrics(METRICS)
    assert sample.tasks == 17
    assert sample.sessions == 2
    assert sample.loop_lag == {0.001: 90.0, 0.01: 99.0, math.inf: 100.0}


def test_quantile_of_what_a_histogram_counted_in_a_window() -> None:
    before = {0.001: 90.0, 0.01: 99.0, math.inf: 100.0}
    # 100 more samples: 50 under 1 ms, 50 between 1 and 10 ms.
    after = {0.001: 140.0, 0.01: 199.0, math.inf: 200.0}
    assert bucket_quantile(before, after, 0.5) == pytest.approx(0.001)
    assert bucket_quantile(before, after, 0.75) == pytest.approx(0.001 + 0.009 * 0.5)
    assert bucket_quantile(before, before, 0.99) is None  # nothing counted
    # Beyond the last finite bound, that bound is all a histogram can say.
    assert bucket_quantile({}, {0.001: 0.0, math.inf: 5.0}, 0.99) == pytest.approx(0.001)


def test_slope_is_per_hour_from_one_value_per_minute() -> None:
    assert slope_per_hour([100.0 + 0.5 * i for i in range(10)]) == pytest.approx(30.0)
    assert slope_per_hour([5.0, None, 5.0]) == pytest.approx(0.0)
    assert slope_per_hour([1.0]) is None


def _minute(i: int, rss: float, fds: int = 12, tasks: float = 20) -> Minute:
    return Minute(i, rss, rss + 30, fds, 24, tasks, 2.0, 800.0, 900.0, 50, 0)


def _turns(start: float, minutes: int, early_ms: float, late_ms: float) -> list[Turn]:
    half = 60.0 * minutes / 2
    return [
        Turn(0, start + s, early_ms if s < half else late_ms, ()) for s in range(0, 60 * minutes, 6)
    ]


IDLE = (ProcessSample(700.0, 11, 10), MetricsSample(4, 0, {}))


def _failed(verdicts: Sequence[Verdict]) -> set[str]:
    return {v.check for v in verdicts if not v.ok}


def test_a_steady_long_run_passes() -> None:
    minutes = [_minute(i, 700.0 + (i % 2) * 0.1) for i in range(1, 31)]
    verdicts = judge(minutes, IDLE, IDLE, _turns(0.0, 30, 800, 820), 0.0)
    assert _failed(verdicts) == set()
    assert {"RSS slope", "p95 drift", "fds growth"} <= {v.check for v in verdicts}


def test_growth_drift_leftovers_and_errors_each_fail() -> None:
    minutes = [_minute(i, 700.0 + i * 0.5, fds=12 + i // 10) for i in range(1, 31)]  # 30 MB/h
    turns = _turns(0.0, 30, 800, 1000)  # p95 25 % slower at the end
    turns.append(Turn(1, 10.0, None, ("no transcript.final",)))
    left = (ProcessSample(700.0, 20, 10), MetricsSample(30, 0, {}))
    failed = _failed(judge(minutes, IDLE, left, turns, 0.0))
    assert failed == {"errors", "RSS slope", "fds growth", "p95 drift", "tasks left", "fds left"}


def test_a_short_run_judges_only_what_is_left_behind() -> None:
    minutes = [_minute(i, 700.0 + i * 5) for i in range(1, 3)]
    assert len(minutes) < JUDGED_MINUTES
    verdicts = judge(minutes, IDLE, IDLE, _turns(0.0, 2, 800, 2000), 0.0)
    assert {v.check for v in verdicts} == {"errors", "tasks left", "fds left", "threads left"}
    assert _failed(verdicts) == set()
    assert _failed(judge(minutes, IDLE, None, [], 0.0)) == {"turns", "sessions ended"}
    assert BASELINE_MINUTES < JUDGED_MINUTES


def test_a_minute_keeps_its_lowest_and_highest_memory() -> None:
    samples = [ProcessSample(rss, 12, 24) for rss in (760.0, 731.5, 779.9, 742.0)]
    samples.append(ProcessSample(745.0, 13, 25))
    metrics = MetricsSample(70, 8, {0.01: 10.0, math.inf: 10.0})
    row = minute_row(3, samples, metrics, {}, [Turn(0, 1.0, 900.0, ())])
    assert (row.rss_mb, row.rss_peak_mb) == (731.5, 779.9)
    assert (row.fds, row.threads) == (13, 25)  # the last sample
    assert row.turns == 1
