"""Media workers (issue 12): ``serve --workers 2`` is a front process, two worker
processes and one ASR server, all real. Offers land on both workers, each session's id
names its worker, a session is reached and deleted through the front whichever worker holds
it, metrics and readiness cover all; a worker killed with SIGKILL costs only its own
sessions (``session.ended`` ``worker-lost`` where the front relays the stream) and comes
back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.proctree import all_stats, read_argv
from bench.soak import gateway_process
from gateway.errors import SessionLimitError
from gateway.http.auth import Principal
from gateway.http.front import Workers, choose, merge_metrics
from gateway.http.worker import parse_principal_header, principal_header
from gateway.ops.children import Child
from gateway.ops.config import Config, load_config, worker_count
from gateway.ops.procstat import read_stat
from gateway.ops.workers import worker_argv
from gateway.testing.loopback import LoopbackClient, load_clips
from signalling.registry import worker_of
from tests.conftest import Ollama
from tests.test_conversation import WsPeer

WORKER_BACK_S = 60.0  # a restarted worker loads VAD and the turn model again


# --- pure parts ---


def test_worker_count() -> None:
    assert worker_count(Config(), cores=2) == 2
    assert worker_count(Config(), cores=16) == 8  # no more workers than sessions
    assert worker_count(Config(max_sessions=100), cores=200) == 64
    assert worker_count(Config(workers=3), cores=2) == 3
    assert worker_count(Config(worker_socket=Path("/run/w1.sock")), cores=8) == 1
    assert worker_count(Config(), cores=8, platform="win32") == 1
    assert load_config(["--workers", "auto"], {}).workers is None
    assert load_config([], {"GATEWAY_WORKERS": "1"}).workers == 1


def test_a_worker_takes_the_users_flags_then_the_fronts() -> None:
    argv = worker_argv(["--auth", "api-key", "--port", "9000"], "w2", Path("/s/w2.sock"),
                       "unix:/s/asr.sock")  # fmt: skip
    config = load_config(argv[argv.index("serve") + 1 :], {})
    # The user's --auth stays: the worker authenticates nobody, but knows whose sessions are.
    assert (config.auth, config.worker_id, config.workers) == ("api-key", "w2", 1)
    assert config.worker_socket == Path("/s/w2.sock")
    assert config.asr_url == "unix:/s/asr.sock"


def test_principal_crosses_to_the_worker_intact() -> None:
    for principal in (Principal("alice:laptop", "api-key"), Principal("sub-1", "jwt")):
        assert parse_principal_header(principal_header(principal)) == principal
    for bad in (None, "", "jwt", "basic:alice", "jwt:"):
        assert parse_principal_header(bad) is None


def test_a_worker_is_chosen_by_its_room() -> None:
    load = {"w1": (2, 0), "w2": (1, 1)}
    assert choose(load, 10, 5, prefer=None) == "w2"
    assert choose(load, 10, 5, prefer="w1") == "w1"  # holds the conversation to resume
    assert choose(load, 10, 5, prefer="w9") == "w2"  # which is not up
    with pytest.raises(SessionLimitError):
        choose(load, 3, 5, prefer=None)
    with pytest.raises(web.HTTPTooManyRequests):
        choose(load, 10, 1, prefer=None)
    with pytest.raises(SessionLimitError, match="no media worker"):
        choose({}, 10, 5, prefer=None)


async def test_offers_being_placed_count_as_their_workers_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each worker counts a session once it is registered: the offers handed over and not
    yet answered count too, so that concurrent offers cannot overshoot the limits."""
    workers = Workers(cast(list[Child], [SimpleNamespace(name=n, ready=True) for n in "ab"]))

    async def idle(client: str) -> dict[str, tuple[int, int]]:
        return {"a": (0, 0), "b": (0, 0)}

    monkeypatch.setattr(workers, "load", idle)
    async with contextlib.AsyncExitStack() as placing:
        first = await placing.enter_async_context(workers.placed("c1", 3, 2))
        second = await placing.enter_async_context(workers.placed("c1", 3, 2))
        assert (first.name, second.name) == ("a", "b")
        with pytest.raises(web.HTTPTooManyRequests):  # c1's two are being set up
            await placing.enter_async_context(workers.placed("c1", 3, 2))
        third = await placing.enter_async_context(workers.placed("c2", 3, 2))
        assert third.name == "a"
        with pytest.raises(SessionLimitError):
            await placing.enter_async_context(workers.placed("c3", 3, 2))
    async with workers.placed("c1", 3, 2) as again:  # answered: the workers' own counts
        assert again.name == "a"


def test_metrics_of_all_workers_in_one_exposition() -> None:
    worker = (
        "# HELP gateway_sessions_active Open sessions\n# TYPE gateway_sessions_active gauge\n"
        "gateway_sessions_active 2.0\n"
    )
    own = "# HELP process_open_fds fds\n# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n"
    merged = merge_metrics({"w1": worker, "w2": worker.replace("2.0", "3.0")}, own).decode()
    assert merged.count("# TYPE gateway_sessions_active gauge") == 1
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert samples[("gateway_sessions_active", (("worker", "w1"),))] == 2
    assert samples[("gateway_sessions_active", (("worker", "w2"),))] == 3
    assert samples[("process_open_fds", ())] == 9


# --- a real front, two workers and an ASR server ---


@pytest.fixture
async def front(ollama: Ollama, tmp_path: Path) -> AsyncIterator[tuple[int, aiohttp.ClientSession]]:
    log = tmp_path / "gateway.log"
    async with gateway_process(ollama[1], 6, log, extra_args=("--workers", "2")) as (proc, http):
        yield proc.pid, http
    assert proc.returncode == 0  # a clean stop of the front, its workers and the ASR server
    assert "Traceback" not in log.read_text()


async def offer(http: aiohttp.ClientSession) -> tuple[LoopbackClient, str]:
    peer = LoopbackClient()
    response = await http.post("/offer", json={"sdp": await peer.offer(), "type": "offer"})
    assert response.status == 200, await response.text()
    answer = await response.json()
    await peer.accept(answer)
    ready = await peer.next_event("session.ready", within=15)
    assert ready["session_id"] == answer["session_id"]
    return peer, answer["session_id"]


def worker_pid(front_pid: int, name: str) -> int:
    """The pid of the front's worker ``name``, from /proc."""
    for pid in children_of(front_pid):
        argv = read_argv(pid)
        if "--worker-id" in argv and argv[argv.index("--worker-id") + 1] == name:
            return pid
    raise AssertionError(f"no worker {name} under pid {front_pid}")


def children_of(pid: int) -> list[int]:
    return [stat.pid for stat in all_stats() if stat.ppid == pid]


async def test_sessions_spread_over_workers_and_are_reached_through_the_front(
    front: tuple[int, aiohttp.ClientSession],
) -> None:
    _, http = front
    ready = await http.get("/ready")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["checks"]["workers"]["ready"] == ["w1", "w2"]
    peers = [await offer(http) for _ in range(2)]
    try:
        assert sorted(worker_of(session_id) or "" for _, session_id in peers) == ["w1", "w2"]
        peer, _ = peers[0]
        _, audio = load_clips()[0]
        peer.mic.play(audio)
        final = await peer.next_event("transcript.final", within=30)
        assert "weather" in final["text"].lower()  # through the shared ASR server
        await peer.next_event("reply.done", within=30)

        text_metrics = await (await http.get("/metrics")).text()
        active = {
            s.labels.get("worker"): s.value
            for family in text_string_to_metric_families(text_metrics)
            for s in family.samples
            if s.name == "gateway_sessions_active"
        }
        assert active == {"w1": 1, "w2": 1}

        for _, session_id in peers:
            deleted = await http.delete(f"/sessions/{session_id}")
            assert deleted.status == 204, await deleted.text()
            again = await http.delete(f"/sessions/{session_id}")
            assert again.status == 404
        unknown = await http.delete("/sessions/w9.nosuchsession")
        assert unknown.status == 404
    finally:
        for peer, _ in peers:
            await peer.close()


async def test_a_killed_worker_costs_only_its_sessions(
    front: tuple[int, aiohttp.ClientSession],
) -> None:
    front_pid, http = front
    # Two /ws sessions, one per worker: the front relays them, so it can tell the one
    # whose worker dies.
    peers = {}
    for _ in range(2):
        peer = WsPeer(await http.ws_connect("/ws"))
        session_id = (await peer.next("session.ready"))["session_id"]
        peers[worker_of(session_id)] = peer
    assert set(peers) == {"w1", "w2"}
    os.kill(worker_pid(front_pid, "w1"), signal.SIGKILL)

    ended = await peers["w1"].next("session.ended", within=5)
    assert ended["reason"] == "worker-lost"
    closing = await peers["w1"].ws.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await peers["w2"].ws.send_json({"type": "text", "text": "are you still there"})
    done = await peers["w2"].next("reply.done", within=15)
    assert done["text"]

    # New sessions go to the worker that is up, until the other is back.
    newcomer, session_id = await offer(http)
    await newcomer.close()
    assert worker_of(session_id) == "w2"
    deadline = time.monotonic() + WORKER_BACK_S
    while time.monotonic() < deadline:
        body = await (await http.get("/ready")).json()
        if body["checks"]["workers"]["ready"] == ["w1", "w2"]:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"w1 did not come back: {body}")
    states = {
        (s.name, s.labels.get("worker")): s.value
        for family in text_string_to_metric_families(await (await http.get("/metrics")).text())
        for s in family.samples
        if s.name.startswith("gateway_worker_")
    }
    assert states[("gateway_worker_restarts_total", "w1")] == 1
    assert states[("gateway_worker_restarts_total", "w2")] == 0
    assert states[("gateway_worker_up", "w1")] == 1
    await peers["w2"].ws.close()


async def test_a_reconnect_resumes_on_the_worker_that_holds_the_history(
    front: tuple[int, aiohttp.ClientSession], ollama: Ollama
) -> None:
    _, http = front
    state, _ = ollama
    peers: list[WsPeer] = []
    ready: list[dict[str, object]] = []
    try:
        for _ in range(3):  # w1, w2, then w1 again: w1 is the busier one
            peers.append(WsPeer(await http.ws_connect("/ws")))
            ready.append(await peers[-1].next("session.ready"))
        holder = str(ready[0]["session_id"])
        assert [worker_of(str(r["session_id"])) for r in ready] == ["w1", "w2", "w1"]
        await peers[0].ws.send_json({"type": "text", "text": "remember the word banana"})
        await peers[0].next("reply.done", within=15)

        # The usual reconnect: the old session is still open, its worker the busier one.
        token = str(ready[0]["conversation"])
        peers.append(WsPeer(await http.ws_connect(f"/ws?conversation={token}")))
        resumed = await peers[-1].next("session.ready")
        assert worker_of(str(resumed["session_id"])) == worker_of(holder)
        ended = await peers[0].next("session.ended")
        assert ended["reason"] == "client"  # replaced by the new session
        await peers[-1].ws.send_json({"type": "text", "text": "which word was it"})
        await peers[-1].next("reply.done", within=15)
        said = [m["content"] for m in state.requests[-1]["messages"]]
        assert "remember the word banana" in said
    finally:
        for peer in peers:
            await peer.ws.close()


KEY_A = "workers-test-key-a-0123456789abcdef"
KEY_B = "workers-test-key-b-0123456789abcdef"


async def test_with_auth_a_session_is_its_creators_on_every_worker(
    ollama: Ollama, tmp_path: Path
) -> None:
    """The single-process rules (tests/test_events.py) hold behind the front: another
    principal gets 404 whichever worker holds the session, and guessing a session's
    capability spends one budget at the front."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY_A}\n{KEY_B}\n")
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    extra = ("--workers", "2", "--auth", "api-key", "--api-keys-file", str(keys))
    log = tmp_path / "gateway.log"
    async with gateway_process(ollama[1], 6, log, extra_args=extra) as (_, http):
        peers: list[LoopbackClient] = []
        sessions: list[dict[str, Any]] = []
        try:
            for _ in range(2):  # one on each worker
                peers.append(LoopbackClient())
                sdp = {"sdp": await peers[-1].offer(), "type": "offer"}
                answered = await http.post("/offer", json=sdp, headers=a)
                assert answered.status == 200, await answered.text()
                sessions.append(await answered.json())
            assert sorted(worker_of(s["session_id"]) or "" for s in sessions) == ["w1", "w2"]
            for session in sessions:
                path = f"/sessions/{session['session_id']}"
                assert (await http.get(path, headers=b)).status == 404
                assert (await http.delete(path, headers=b)).status == 404
                assert (await http.get(f"{path}/events", headers=b)).status == 404
                assert (await http.get(path, headers=a)).status == 204
            config = await (await http.get("/config")).json()
            assert config["auth"] == "api-key"

            # Not a WebSocket handshake: refused at the front; no worker made a session.
            assert (await http.get("/ws", headers=a)).status == 400
            # A browser's /ws: the token as a subprotocol; the session is A's.
            ws = await http.ws_connect("/ws", protocols=("events.v1", f"bearer.{KEY_A}"))
            assert ws.protocol == "events.v1"
            ready = await WsPeer(ws).next("session.ready")
            theirs = f"/sessions/{ready['session_id']}"
            assert (await http.get(theirs, headers=b)).status == 404
            assert (await http.get(theirs, headers=a)).status == 204
            await ws.close()
            text_metrics = await (await http.get("/metrics", headers=a)).text()
            started = sum(
                s.value
                for family in text_string_to_metric_families(text_metrics)
                for s in family.samples
                if s.name == "gateway_sessions_started_total"
            )
            assert started == 3  # two offers and one WebSocket

            guess = f"/sessions/{sessions[0]['session_id']}/events?token=guess"
            statuses = [(await http.get(guess)).status for _ in range(12)]
            assert statuses[:10] == [404] * 10
            assert statuses[-1] == 429
            right = f"/sessions/{sessions[0]['session_id']}/events?token="
            assert (await http.get(right + sessions[0]["events_token"])).status == 429
        finally:
            for peer in peers:
                await peer.close()
    assert "Traceback" not in log.read_text()


def alive(pid: int) -> bool:
    """Running (a zombie has exited; whoever adopted it reaps it)."""
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


async def test_children_leave_when_the_front_is_killed(ollama: Ollama, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    async with gateway_process(ollama[1], 2, log, extra_args=("--workers", "2")) as (proc, _):
        children = children_of(proc.pid)
        assert len(children) == 3  # the ASR server and two workers
        argv = read_argv(children[0])
        flag = "--socket" if "--socket" in argv else "--worker-socket"
        folder = Path(argv[argv.index(flag) + 1]).parent
        assert folder.is_dir()
        proc.kill()
        await proc.wait()
        deadline = time.monotonic() + 15
        while any(map(alive, children)):
            assert time.monotonic() < deadline, "children outlived their front"
            await asyncio.sleep(0.2)
    assert "Traceback" not in log.read_text()
    assert not folder.exists()  # the last child out removed the front's socket folder


def test_a_bad_key_file_stops_the_front_before_any_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.ops.cli import main

    missing = tmp_path / "no-such-keys"
    argv = ["serve", "--no-tls", "--workers", "2", "--auth", "api-key"]
    started = time.monotonic()
    assert main([*argv, "--api-keys-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [
        f"local-ai-gateway: error: --api-keys-file: cannot read {missing}: "
        "No such file or directory"
    ]
    assert time.monotonic() - started < 5  # no model was loaded, no worker started
