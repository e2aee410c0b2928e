"""Per-client limits: a token bucket for ``POST /offer`` (``--offer-rate``) and a count of
live sessions (``--sessions-per-client``). Pure logic, ``now`` passed in, bounded memory.

Keys are client addresses from :func:`client_key`. Memory is bounded by ``max_keys``: when
more clients than that are active within one refill period, the least recently seen
bucket is forgotten, and that client starts again with a full burst. That fails open on
purpose: failing closed would let whoever fills the table lock everyone else out, while
``--max-sessions`` still caps the total.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 10_000
# Full buckets are pruned from the least-recently-used end; a few per call keeps each
# call O(1) while the table still drains faster than it fills.
_PRUNE_PER_CALL = 4


def client_key(remote: str | None) -> str:
    """The unit a limit applies to. One IPv6 host usually owns a whole /64, so it counts as
    one client; an IPv4-mapped IPv6 address is its IPv4 address."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote  # a Unix socket path or similar: one key as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, then ``rate_per_minute``."""

    def __init__(
        self, rate_per_minute: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if rate_per_minute <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(
                f"need rate_per_minute > 0, burst >= 1, max_keys >= 1; got "
                f"{rate_per_minute}, {burst}, {max_keys}"
            )
        self.burst = burst
        self.max_keys = max_keys
        self._per_s = rate_per_minute / 60.0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        # max(): a clock that steps back must not drain the bucket.
        elapsed = max(0.0, now - bucket.updated)
        return min(float(self.burst), bucket.tokens + elapsed * self._per_s)

    def wait(self, key: str, now: float) -> float | None:
        """Like :meth:`check`, but takes no token and stores nothing: for a bucket that is
        spent on failures, looked at before each attempt."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        level = self._level(bucket, now)
        return None if level >= 1.0 else (1.0 - level) / self._per_s

    def check(self, key: str, now: float) -> float | None:
        """None if allowed (a token is taken); else the seconds until one is available."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = self._level(bucket, now)
            bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            wait = None
        else:
            wait = (1.0 - bucket.tokens) / self._per_s
        self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        for _ in range(_PRUNE_PER_CALL):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            # A full bucket is the same as no bucket: forgetting it changes nothing.
            if self._level(bucket, now) < self.burst:
                return
            del self._buckets[key]


class ConcurrencyLimiter:
    """How many things (sessions) each key holds at once, at most ``limit`` each.

    Only keys holding something are stored, so memory follows live sessions; ``max_keys``
    is a backstop that refuses new keys rather than forgetting held counts.
    """

    def __init__(self, limit: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if limit < 1 or max_keys < 1:
            raise ValueError(f"need limit >= 1 and max_keys >= 1; got {limit}, {max_keys}")
        self.limit = limit
        self.max_keys = max_keys
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def acquire(self, key: str) -> bool:
        count = self._held.get(key, 0)
        if count >= self.limit or (count == 0 and len(self._held) >= self.max_keys):
            return False
        self._held[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """Gives one back; a key holding nothing is left alone, so a double release (a
        session closed twice) cannot push a count below zero."""
        count = self._held.get(key, 0)
        if count <= 1:
            self._held.pop(key, None)
        else:
            self._held[key] = count - 1
