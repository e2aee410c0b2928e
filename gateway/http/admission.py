"""Admission from measured capacity (``gateway.ops.capacity``), wired into the app: the
sampler that feeds it every second, the refusal of a new session, and what ``/ready`` and
``/metrics`` show. The single process measures itself; the front of media workers
measures its whole process tree (``gateway.http.front``)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from gateway.errors import AtCapacity
from gateway.http.state import CONFIG
from gateway.ops.capacity import Capacity, Headroom, Usage

logger = logging.getLogger(__name__)

CAPACITY = web.AppKey("capacity", Capacity)
SAMPLE_S = 1.0

Measure = Callable[[], Awaitable[Usage]]


def usable_cores() -> float:
    """The cores this process may run on (a container's or ``taskset``'s limit)."""
    if hasattr(os, "sched_getaffinity"):
        return float(len(os.sched_getaffinity(0)))
    return float(os.cpu_count() or 1)


def sampling(
    measure: Measure, registry: CollectorRegistry
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: ``app[CAPACITY]``, fed by ``measure`` every :data:`SAMPLE_S`
    (``--admission off``: nothing), its figures in ``registry``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        if config.admission == "off":
            yield
            return
        app[CAPACITY] = capacity = Capacity(
            usable_cores(), cpu_limit=config.cpu_limit, asr_limit=config.asr_limit
        )
        registry.register(_Figures(capacity))
        task = asyncio.get_running_loop().create_task(
            _sample(capacity, measure), name="capacity-sampler"
        )
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


async def _sample(capacity: Capacity, measure: Measure) -> None:
    while True:
        try:
            capacity.note(await measure())
        except Exception:  # a failed reading must not end admission's view for good
            logger.exception("capacity: a usage sample failed")
        await asyncio.sleep(SAMPLE_S)


def refuse_when_full(app: web.Application) -> None:
    """Raises :class:`AtCapacity` (503 + Retry-After) when the measured cost of one more
    session does not fit."""
    capacity = app.get(CAPACITY)
    if capacity is None:
        return
    headroom = capacity.headroom()
    if headroom.full:
        raise AtCapacity(_why(headroom, capacity))


def capacity_check(app: web.Application) -> dict[str, Any] | None:
    """``/ready``'s ``capacity``: not ok while full, so a balancer sends new people
    elsewhere; None with ``--admission off``."""
    capacity = app.get(CAPACITY)
    if capacity is None:
        return None
    headroom = capacity.headroom()
    check: dict[str, Any] = {
        "ok": not headroom.full,
        "headroom_sessions": headroom.sessions,
        "cpu_share": _round(headroom.cpu),
        "asr_share": _round(headroom.asr),
    }
    if headroom.full:
        check["message"] = _why(headroom, capacity)
    return check


def _why(headroom: Headroom, capacity: Capacity) -> str:
    if headroom.limit == "asr":
        used = f"the speech recogniser is busy {100 * (headroom.asr or 0):.0f} % of the time"
    else:
        used = f"the sessions use {100 * (headroom.cpu or 0):.0f} % of {capacity.cores:g} cores"
    return (
        f"the gateway is at capacity: {used}, and one more session would slow every one; "
        "try again shortly (operators: --cpu-limit, --asr-limit, or --admission off)"
    )


def _round(share: float | None) -> float | None:
    return None if share is None else round(share, 3)


class _Figures:
    def __init__(self, capacity: Capacity) -> None:
        self._capacity = capacity

    def collect(self) -> list[Metric]:
        headroom = self._capacity.headroom()
        figures = (
            ("gateway_capacity_headroom_sessions", "Sessions that still fit (NaN: unmeasured)",
             headroom.sessions),
            ("gateway_capacity_cpu_share", "Share of the usable cores in use", headroom.cpu),
            ("gateway_capacity_asr_share", "Share of the recogniser's time in use", headroom.asr),
        )  # fmt: skip
        return [
            GaugeMetricFamily(name, doc, value=math.nan if value is None else float(value))
            for name, doc, value in figures
        ]
