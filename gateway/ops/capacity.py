"""Admission from measured capacity: what one more session would cost, learned from what
the open ones cost, against what the gateway has. Pure: usage samples in, headroom out.

Every second the gateway notes (:class:`Usage`) the CPU time its processes have used, the
time its speech recogniser has been busy, and how many sessions are open. Over the last
``window_s``::

    cpu share  = CPU seconds / (seconds x cores)     of the cores the gateway may use
    asr share  = recogniser busy seconds / seconds    of the recogniser's time
    one session costs the share / the mean number of open sessions

A new session is admitted while the sessions open now, and it, would still fit under the
limits at that cost each (``cpu_limit``, ``asr_limit``): those already open keep their
latency, and the newcomer hears 503 with ``Retry-After`` instead of slowing everyone.
Counting the sessions open now, not the window's mean, charges a session admitted a
moment ago at once, before it has been measured. The defaults are well below full: a
queue's waits grow steeply as it fills (measured with ``bench capacity``: at 0.8 and 0.6
the admitted sessions' p95 was 1.59x one session's; everyone admitted, 10.2x). The cost includes the
gateway's idle upkeep, so the estimate errs on the side of refusing. Until ``min_window_s``
of the window had sessions open, nothing is refused (``--max-sessions`` still applies): a
gateway that has served nobody has nothing to learn from.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

Resource = Literal["cpu", "asr"]


@dataclass(frozen=True)
class Usage:
    at: float  # monotonic seconds
    cpu_s: float | None  # CPU seconds the gateway's processes used so far (None: unknown)
    asr_busy_s: float | None  # seconds the recogniser has been busy so far (None: unknown)
    sessions: int  # open now


@dataclass(frozen=True)
class Headroom:
    sessions: int | None  # how many more fit now; None: not measured yet (no refusal)
    cpu: float | None  # share of the CPU in use over the window
    asr: float | None  # share of the recogniser's time in use over the window
    limit: Resource | None  # what runs out first (None: not measured)

    @property
    def full(self) -> bool:
        return self.sessions == 0


class Capacity:
    """The window of :class:`Usage` samples and what it says (see the module)."""

    def __init__(
        self,
        cores: float,
        *,
        cpu_limit: float = 0.7,
        asr_limit: float = 0.5,
        window_s: float = 30.0,
        min_window_s: float = 10.0,
        max_samples: int = 120,
    ) -> None:
        if cores <= 0 or not 0 < cpu_limit <= 1 or not 0 < asr_limit <= 1:
            raise ValueError(f"cores {cores}, cpu_limit {cpu_limit}, asr_limit {asr_limit}")
        self.cores = cores
        self.cpu_limit = cpu_limit
        self.asr_limit = asr_limit
        self._window_s = window_s
        self._min_window_s = min_window_s
        self._samples: deque[Usage] = deque(maxlen=max_samples)

    def note(self, usage: Usage) -> None:
        """A new sample; counters that went backwards (a restarted process) restart the
        window."""
        last = self._samples[-1] if self._samples else None
        if last is not None and (
            _backwards(last.cpu_s, usage.cpu_s) or _backwards(last.asr_busy_s, usage.asr_busy_s)
        ):
            self._samples.clear()
        self._samples.append(usage)
        while len(self._samples) > 2 and usage.at - self._samples[1].at >= self._window_s:
            self._samples.popleft()

    def headroom(self) -> Headroom:
        samples = list(self._samples)
        if len(samples) < 2:
            return Headroom(None, None, None, None)
        first, last = samples[0], samples[-1]
        span = last.at - first.at
        cpu = _share(first.cpu_s, last.cpu_s, span * self.cores)
        asr = _share(first.asr_busy_s, last.asr_busy_s, span)
        # The time the window had sessions open, and how many on average over it.
        busy = 0.0
        weighted = 0.0
        for before, after in itertools.pairwise(samples):
            if before.sessions:
                busy += after.at - before.at
                weighted += before.sessions * (after.at - before.at)
        if busy < self._min_window_s or span <= 0:
            return Headroom(None, cpu, asr, None)
        mean_sessions = weighted / span
        fits: dict[Resource, float] = {}
        measured: tuple[tuple[Resource, float | None, float], ...] = (
            ("cpu", cpu, self.cpu_limit),
            ("asr", asr, self.asr_limit),
        )
        for resource, share, limit in measured:
            if share is None:
                continue
            each = share / mean_sessions
            fits[resource] = math.inf if each <= 0 else limit / each - last.sessions
        if not fits:
            return Headroom(None, cpu, asr, None)
        limit_by = min(fits, key=lambda r: fits[r])
        more = fits[limit_by]
        # (A hair over: 0.6 / 0.2 is 2.9999999999999996 in floating point.)
        sessions = None if math.isinf(more) else max(0, math.floor(more + 1e-9))
        return Headroom(sessions, cpu, asr, None if sessions is None else limit_by)


def _backwards(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and after < before


def _share(before: float | None, after: float | None, capacity: float) -> float | None:
    if before is None or after is None or capacity <= 0:
        return None
    return max(0.0, after - before) / capacity
