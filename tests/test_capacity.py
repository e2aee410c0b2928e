"""Admission from measured capacity (issue 12): the estimate (pure), and a gateway, one
process or the front of workers, that refuses a session the measurement has no room for
with 503 + Retry-After, says so in /ready and shows the headroom in /metrics."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.admission import CAPACITY
from gateway.http.front import Workers, build_front_app
from gateway.ops.capacity import Capacity, Usage
from gateway.ops.config import Config, load_config
from gateway.testing.loopback import LoopbackClient
from tests.conftest import AiohttpClient, GatewayFactory, Ollama


def fed(capacity: Capacity, seconds: int, *, cpu_per_s: float, asr_per_s: float,
        sessions: int, start: float = 0.0) -> Capacity:  # fmt: skip
    """``capacity`` after ``seconds`` of one sample a second at these rates."""
    for t in range(seconds + 1):
        capacity.note(Usage(start + t, cpu_per_s * t, asr_per_s * t, sessions))
    return capacity


def test_nothing_is_refused_before_sessions_were_measured() -> None:
    capacity = Capacity(2)
    assert capacity.headroom().sessions is None
    fed(capacity, 30, cpu_per_s=1.9, asr_per_s=0.9, sessions=0)  # busy, but not with sessions
    headroom = capacity.headroom()
    assert headroom.sessions is None
    assert not headroom.full
    assert headroom.cpu == pytest.approx(0.95)


def test_what_fits_is_the_room_left_over_what_one_session_costs() -> None:
    # 2 sessions use 0.6 of 2 cores: 0.3 of a core each (0.15 of the machine).
    light = fed(Capacity(2, cpu_limit=0.85), 30, cpu_per_s=0.6, asr_per_s=0.1, sessions=2)
    headroom = light.headroom()
    assert headroom.cpu == pytest.approx(0.3)
    assert headroom.sessions == 3  # 0.85 / 0.15 = 5.7 sessions in all, 2 open
    assert headroom.limit == "cpu"
    # The recogniser is the bottleneck: busy 0.8 of the time for 4 sessions.
    talky = fed(Capacity(8, asr_limit=0.85), 30, cpu_per_s=1.0, asr_per_s=0.8, sessions=4)
    assert talky.headroom().asr == pytest.approx(0.8)  # 0.85 / 0.2 = 4.25 in all: 4 open
    assert talky.headroom().sessions == 0
    assert talky.headroom().limit == "asr"
    assert talky.headroom().full


def test_the_window_forgets_old_load_and_restarted_counters() -> None:
    capacity = fed(Capacity(2, window_s=30), 30, cpu_per_s=1.8, asr_per_s=0.0, sessions=4)
    assert capacity.headroom().full
    # A quiet minute after: the busy past leaves the window.
    for t in range(31, 92):
        capacity.note(Usage(t, 1.8 * 30 + 0.1 * (t - 30), 0.0, 1))
    assert capacity.headroom().sessions == 13  # 0.7 / 0.05 = 14 in all, 1 open
    # A process that restarted counts from zero: the window starts again.
    capacity.note(Usage(92, 0.5, 0.0, 1))
    assert capacity.headroom().sessions is None


def test_unknown_readings_leave_only_what_is_known() -> None:
    capacity = Capacity(2, asr_limit=0.6)
    for t in range(31):
        capacity.note(Usage(t, None, 0.4 * t, 2))
    headroom = capacity.headroom()
    assert headroom.cpu is None
    assert headroom.sessions == 1  # 0.6 / 0.2 = 3 in all, 2 open
    # Sessions admitted a moment ago count at once, before they are measured.
    capacity.note(Usage(31, None, 12.4, 3))
    assert capacity.headroom().full
    with pytest.raises(ValueError, match="cpu_limit"):
        Capacity(2, cpu_limit=1.5)


def test_the_flags() -> None:
    assert Config().admission == "measured"
    config = load_config(["--admission", "off", "--cpu-limit", "0.7", "--asr-limit", "0.5"], {})
    assert (config.admission, config.cpu_limit, config.asr_limit) == ("off", 0.7, 0.5)


def fill(capacity: Capacity) -> None:
    """What a gateway measures when 3 sessions use 95 % of 2 cores (the sampler's own
    reading, taken at start-up, is left behind: these counters start lower)."""
    capacity.cores = 2
    fed(capacity, 30, cpu_per_s=1.9, asr_per_s=0.2, sessions=3)


@pytest.fixture
def one_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler reads once at start-up and then leaves the test to feed it."""
    monkeypatch.setattr("gateway.http.admission.SAMPLE_S", 3600.0)


def headroom_metric(text: str) -> float:
    return next(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_capacity_headroom_sessions"
    )


async def refused(client: TestClient) -> None:  # type: ignore[type-arg]
    peer = LoopbackClient()
    try:
        response = await client.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
    finally:
        await peer.close()
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    error = (await response.json())["error"]
    assert error["code"] == "at_capacity"
    assert "95 % of 2 cores" in error["message"]
    ready = await client.get("/ready")
    assert ready.status == 503
    capacity = (await ready.json())["checks"]["capacity"]
    assert capacity["ok"] is False
    assert capacity["headroom_sessions"] == 0
    assert headroom_metric(await (await client.get("/metrics")).text()) == 0


async def test_a_full_gateway_refuses_a_new_session_and_says_so(
    gateway: GatewayFactory, ollama: Ollama, one_sample: None
) -> None:
    client = await gateway(ollama_host=ollama[1], admission="measured")
    assert "capacity" in (await (await client.get("/ready")).json())["checks"]
    fill(client.app[CAPACITY])
    await refused(client)
    ws = await client.get("/ws")  # a WebSocket session is refused alike
    assert ws.status == 503


async def test_the_front_of_workers_refuses_before_choosing_one(
    aiohttp_client: AiohttpClient, one_sample: None
) -> None:
    client = await aiohttp_client(build_front_app(Config(no_tls=True), Workers([])))
    fill(client.app[CAPACITY])
    await refused(client)
