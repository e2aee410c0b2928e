"""Memory settings for a long-running gateway: the C allocator's (glibc on Linux) and
Python's cyclic garbage collector's.

glibc gives each thread that contends for the heap an arena of its own, up to eight per
core, and raises its mmap threshold each time a large block is freed, after which blocks
of megabytes (Whisper's tensors, decoded audio) are carved from those arenas instead of
mapped and unmapped. Freed, they leave holes that the arenas keep: the gateway's resident
memory grew for as long as it served (the soak benchmark measured it), and a Whisper
worker thread alone held ~140 MB more than with these settings.

Two arenas, a fixed mmap threshold and a trim threshold to match keep large blocks out of
the arenas and give freed memory back. The environment's own ``MALLOC_*`` variables win:
a user who set one has chosen.

Python frees most objects as soon as the last reference goes, but not those in reference
cycles, and an ended WebRTC session is full of them (aiortc's transports and their event
listeners): with its libopus, FFmpeg, OpenSSL and SRTP state, ~0.45 MB per session that
only a full collection frees. A full collection runs once the objects that survived the
younger generations reach a quarter of those in the oldest; with torch and Whisper loaded
that is hundreds of sessions away, so memory grew for hours, and each full collection
then paused the event loop for 60-180 ms. :func:`freeze_startup_heap` moves what start-up
made into the collector's permanent generation: full collections then look only at what
serving made, so they come every few sessions and take a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# mallopt(3) parameters, and the environment variables glibc reads for each.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
SETTINGS: tuple[tuple[int, str, int], ...] = (
    (_M_ARENA_MAX, "MALLOC_ARENA_MAX", 2),
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 128 * 1024),
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 128 * 1024),
)


def tune_allocator(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Applies :data:`SETTINGS` that the environment does not set; call it before the
    threads start. Returns what it set (empty where the C library is not glibc)."""
    if not sys.platform.startswith("linux"):
        return []
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has a mallopt that ignores these
    except (OSError, AttributeError):
        return []
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = []
    for param, variable, value in SETTINGS:
        if variable in environ:
            continue
        if mallopt(param, value) == 1:
            applied.append(f"{variable}={value}")
        else:
            logger.debug("mallopt(%d, %d) refused", param, value)
    return applied


def freeze_startup_heap() -> int:
    """Collects, then freezes everything alive (call it once start-up has loaded the
    models, before serving); returns how many objects were frozen. The second collection
    resets the collector's idea of the old generation's size to what is left outside the
    frozen set (nearly nothing), so that full collections follow what serving makes."""
    gc.collect()
    gc.freeze()
    gc.collect()
    return gc.get_freeze_count()
