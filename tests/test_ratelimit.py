"""Token bucket and per-client session counts: exact with ``now`` passed in, and bounded."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.middleware import rate_limited
from signalling.limits import ConcurrencyLimiter, RateLimiter, client_key

# Float refills may round a hair over an exact integer boundary.
EPS = 1e-6


def test_burst_then_rate() -> None:
    limiter = RateLimiter(rate_per_minute=20, burst=3)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [None, None, None]
    assert limiter.check("a", 0.0) == pytest.approx(3.0)  # one token per 3 s
    assert limiter.check("a", 1.0) == pytest.approx(2.0)
    assert limiter.check("a", 3.0) is None
    assert limiter.check("a", 3.0) == pytest.approx(3.0)


def test_refused_checks_take_nothing() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=1)
    assert limiter.check("a", 0.0) is None
    for _ in range(100):
        assert limiter.check("a", 0.5) == pytest.approx(0.5)
    assert limiter.check("a", 1.0) is None


def test_wait_looks_without_taking() -> None:
    limiter = RateLimiter(rate_per_minute=20, burst=2)
    assert limiter.wait("a", 0.0) is None  # an unknown key has its whole burst
    assert len(limiter) == 0  # and looking stored nothing
    assert limiter.check("a", 0.0) is None
    for _ in range(5):
        assert limiter.wait("a", 0.0) is None  # a token left, and looking takes none
    assert limiter.check("a", 0.0) is None
    assert limiter.wait("a", 0.0) == pytest.approx(3.0)
    assert limiter.wait("a", 2.0) == pytest.approx(1.0)
    assert limiter.wait("a", 3.0) is None
    assert limiter.wait("b", 0.0) is None


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate_per_minute=1, burst=1)
    assert limiter.check("a", 0.0) is None
    assert limiter.check("a", 0.0) is not None
    assert limiter.check("b", 0.0) is None


def test_a_clock_stepping_back_does_not_refill_or_drain() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=2)
    assert limiter.check("a", 100.0) is None
    assert limiter.check("a", 50.0) is None
    assert limiter.check("a", 50.0) is not None
    assert limiter.check("a", 100.5) is not None  # refills from 100, not from 50
    assert limiter.check("a", 101.0) is None


def test_least_recently_used_key_is_forgotten() -> None:
    limiter = RateLimiter(rate_per_minute=1, burst=1, max_keys=2)
    for key in ("a", "b"):
        assert limiter.check(key, 0.0) is None
    assert limiter.check("a", 0.0) is not None  # "a" is now the most recent
    assert limiter.check("c", 0.0) is None
    assert len(limiter) == 2
    assert limiter.check("a", 0.0) is not None  # kept
    assert limiter.check("b", 0.0) is None  # forgotten: a full burst again


def test_full_buckets_are_pruned() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=2)
    for key in ("a", "b", "c"):
        limiter.check(key, 0.0)
    assert len(limiter) == 3
    limiter.check("d", 10.0)  # a, b, c refilled long ago
    assert len(limiter) == 1


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0)]
)
def test_bad_settings(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError, match="need rate_per_minute"):
        RateLimiter(rate, burst, max_keys)


# Time steps in units of one token's refill period, so that steps land near the boundaries.
steps = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.one_of(st.sampled_from([0.0, 0.995, 1.0, 1.005]), st.floats(0.0, 1.5, allow_nan=False)),
    ),
    max_size=150,
)


@given(
    rate=st.integers(1, 600),
    burst=st.integers(1, 10),
    steps=steps,
)
def test_never_more_than_burst_plus_rate(
    rate: int, burst: int, steps: list[tuple[str, float]]
) -> None:
    limiter = RateLimiter(rate, burst)
    admitted: dict[str, list[float]] = defaultdict(list)
    now = 0.0
    for key, periods in steps:
        now += periods * 60 / rate
        if limiter.check(key, now) is None:
            admitted[key].append(now)
    for times in admitted.values():
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                count = j - i + 1
                assert count <= burst + rate * (times[j] - start) / 60 + EPS


@given(
    rate=st.integers(1, 600),
    burst=st.integers(1, 10),
    steps=steps,
)
def test_retry_after_is_honest(rate: int, burst: int, steps: list[tuple[str, float]]) -> None:
    limiter = RateLimiter(rate, burst)
    now = 0.0
    for key, periods in steps:
        now += periods * 60 / rate
        wait = limiter.check(key, now)
        if wait is not None:
            assert 0 < wait <= 60 / rate + EPS
            # Not a moment sooner (another probe takes nothing), but then, yes.
            if wait > 1e-3:
                assert limiter.check(key, now + wait * 0.999) is not None
            assert limiter.check(key, now + wait + EPS) is None
            now += wait + EPS


@given(
    max_keys=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.integers(0, 200), st.floats(0.0, 2.0, allow_nan=False)), max_size=300
    ),
)
def test_memory_is_bounded(max_keys: int, steps: list[tuple[int, float]]) -> None:
    limiter = RateLimiter(rate_per_minute=30, burst=3, max_keys=max_keys)
    now = 0.0
    for key, dt in steps:
        now += dt
        limiter.check(str(key), now)
        assert len(limiter) <= max_keys


# --- sessions per client ---


def test_concurrency_limit_per_key() -> None:
    limiter = ConcurrencyLimiter(limit=2)
    assert limiter.acquire("a")
    assert limiter.acquire("a")
    assert not limiter.acquire("a")
    assert limiter.acquire("b")
    limiter.release("a")
    assert limiter.held("a") == 1
    assert limiter.acquire("a")


def test_release_forgets_idle_keys_and_tolerates_doubles() -> None:
    limiter = ConcurrencyLimiter(limit=2)
    limiter.acquire("a")
    limiter.release("a")
    limiter.release("a")
    limiter.release("never")
    assert len(limiter) == 0
    assert limiter.held("a") == 0


def test_concurrency_key_table_is_bounded() -> None:
    limiter = ConcurrencyLimiter(limit=3, max_keys=2)
    assert limiter.acquire("a")
    assert limiter.acquire("b")
    assert not limiter.acquire("c")  # held counts are never forgotten to make room
    assert limiter.acquire("a")  # a known key still may
    limiter.release("b")
    assert limiter.acquire("c")


@given(
    limit=st.integers(1, 4),
    max_keys=st.integers(1, 5),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 8)), max_size=200),
)
def test_concurrency_matches_a_model(
    limit: int, max_keys: int, ops: list[tuple[bool, int]]
) -> None:
    limiter = ConcurrencyLimiter(limit, max_keys)
    model: dict[str, int] = {}
    for acquire, n in ops:
        key = str(n)
        if acquire:
            expected = model.get(key, 0) < limit and (key in model or len(model) < max_keys)
            assert limiter.acquire(key) is expected
            if expected:
                model[key] = model.get(key, 0) + 1
        else:
            limiter.release(key)
            if model.get(key, 0) > 1:
                model[key] -= 1
            else:
                model.pop(key, None)
        assert len(limiter) == len(model) <= max_keys
        assert all(limiter.held(k) == v <= limit for k, v in model.items())


# --- helpers ---


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::1", "::/64"),
        (None, "unknown"),
        ("", "unknown"),
        ("/run/gateway.sock", "/run/gateway.sock"),
    ],
)
def test_client_key(remote: str | None, key: str) -> None:
    assert client_key(remote) == key


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (2.01, "3")])
def test_rate_limited_response(wait: float, header: str) -> None:
    response = rate_limited(wait, "too many offers from 192.0.2.7")
    assert response.status == 429
    assert response.headers["Retry-After"] == header
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {
        "error": {"code": "rate_limited", "message": "too many offers from 192.0.2.7"}
    }
