"""The C allocator's settings (gateway.ops.memory): applied on glibc, never over a user's
own MALLOC_* variables."""

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
