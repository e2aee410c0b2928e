"""When a session must end on its own. Pure: times in, a decision out.

Three clocks, all ``time.monotonic`` seconds:
- a client that got an answer but never connects frees its slot after ``connect_timeout_s``;
- no session outlives ``max_duration_s``;
- a session with no speech and no client message for ``idle_timeout_s`` ends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionLimits:
    connect_timeout_s: float = 30.0
    max_duration_s: float = 4 * 3600.0
    idle_timeout_s: float = 600.0


@dataclass(frozen=True)
class Expiry:
    reason: str | None  # why the session must end now, or None
    check_in_s: float  # when to ask again


def expiry(
    limits: SessionLimits,
    *,
    created: float,
    connected: bool,
    last_activity: float,
    now: float,
) -> Expiry:
    deadlines = [(created + limits.max_duration_s, "max-duration")]
    if connected:
        deadlines.append((last_activity + limits.idle_timeout_s, "idle"))
    else:
        deadlines.append((created + limits.connect_timeout_s, "connect-timeout"))
    when, reason = min(deadlines)
    if now >= when:
        return Expiry(reason, 0.0)
    return Expiry(None, when - now)
