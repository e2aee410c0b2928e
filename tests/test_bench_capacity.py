"""``bench capacity``'s arithmetic: what a run's turns and arrivals say."""

from __future__ import annotations

from bench.capacity import Crowd, summary, verdict


def test_a_crowd_that_kept_its_latency_meets_the_target() -> None:
    crowd = Crowd("measured", alone_ms=[600.0] * 20, crowd_ms=[700.0] * 60, admitted=6,
                  refused=14)  # fmt: skip
    row = summary(crowd)
    assert row["ratio"] == 700 / 600
    assert (row["admitted"], row["refused"], row["turns"]) == (6, 14, 80)
    assert verdict(row).startswith("admitted sessions' p95 within 1.5x of one session's, the "
                                   "rest refused: met")  # fmt: skip


def test_a_slowed_crowd_or_errors_miss_it() -> None:
    slowed = summary(Crowd("off", alone_ms=[600.0] * 20, crowd_ms=[2000.0] * 60, admitted=20))
    assert "missed (3.33x, 20 admitted, 0 refused" in verdict(slowed)
    erring = Crowd("measured", alone_ms=[600.0], crowd_ms=[600.0], errors=["no transcript.final"])
    assert "missed" in verdict(summary(erring))
    assert summary(Crowd("measured"))["ratio"] is None
