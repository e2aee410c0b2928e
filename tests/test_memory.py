"""Memory settings (gateway.ops.memory): the C allocator's, applied on glibc, never over a
user's own MALLOC_* variables; the start-up heap frozen, so that ended sessions' reference
cycles are collected soon."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from gateway.ops.memory import SETTINGS, tune_allocator

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)


@glibc
def test_applies_each_setting_the_environment_leaves_open() -> None:
    applied = tune_allocator({"MALLOC_ARENA_MAX": "4"})
    assert applied == [f"{name}={value}" for _, name, value in SETTINGS[1:]]
    assert tune_allocator({name: "1" for _, name, _ in SETTINGS}) == []


@glibc
def test_large_blocks_are_given_back_once_tuned() -> None:
    """A freed 1 MiB block: mapped and unmapped once the threshold is fixed, so the
    process's memory goes back down (the point of the settings)."""
    script = textwrap.dedent(
        """
        import ctypes, sys
        from gateway.ops.memory import tune_allocator
        if sys.argv[1] == "tuned":
            tune_allocator({})
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = (ctypes.c_void_p,)
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        # Free a big block once: glibc then raises its threshold to that size (untuned).
        libc.free(libc.malloc(8 << 20))
        before = rss()
        blocks = [libc.malloc(1 << 20) for _ in range(64)]
        for b in blocks:
            ctypes.memset(b, 1, 1 << 20)
        for b in blocks[:-1]:
            libc.free(b)  # the last stays: the heap's top is pinned, as in a live process
        print(rss() - before)
        """
    )
    kept = {
        mode: int(subprocess.check_output([sys.executable, "-c", script, mode], text=True))
        for mode in ("default", "tuned")
    }
    assert kept["tuned"] < 4 << 20 < kept["default"], kept


def test_ended_sessions_cycles_are_collected_soon_once_the_startup_heap_is_frozen() -> None:
    """Many long-lived objects from start-up (torch, Whisper) make the collector's full
    collections rare, so an ended session's cycles (aiortc's objects, and the native state
    they hold) waited hours. Frozen, they go within a few sessions. Each in its own
    process: freezing is process-wide."""
    script = textwrap.dedent(
        """
        import gc, sys, weakref
        from gateway.ops.memory import freeze_startup_heap
        startup = [[i] for i in range(400_000)]  # modules, models: alive for good
        gc.collect()
        if sys.argv[1] == "frozen":
            assert freeze_startup_heap() >= len(startup)
        class Peer:
            pass
        ended = []
        for _ in range(200):
            a, b = Peer(), Peer()
            a.other, b.other = b, a  # a session's objects refer to each other
            ended.append(weakref.ref(a))
            for _ in range(5):  # it lives a while: requests and frames come and go
                work = [[j] for j in range(1500)]
                del work
            del a, b
        print(sum(ref() is None for ref in ended))
        """
    )
    freed = {
        mode: int(subprocess.check_output([sys.executable, "-c", script, mode], text=True))
        for mode in ("default", "frozen")
    }
    assert freed["frozen"] >= 190, freed  # all but the last few
    if sys.version_info < (3, 14):  # before the incremental collector: what this fixes
        assert freed["default"] < 150, freed
