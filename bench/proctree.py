"""A process tree's CPU time, memory and UDP sockets, read from Linux's ``/proc``.

``bench media`` measures ``serve --workers 2`` as one server: the front, its media workers
and the ASR server, every process under the front. The parsers take the files' text, so
that they can be tested without a process tree; the readers return nothing off Linux.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.ops.procstat import ProcStat, read_stat

UDP_TABLES = ("/proc/net/udp", "/proc/net/udp6")


def descendants(stats: Iterable[ProcStat], root: int) -> list[int]:
    """``root`` and every process under it (children, their children...), root first."""
    children: dict[int, list[int]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree, queue = [root], [root]
    while queue:
        for child in sorted(children.get(queue.pop(0), ())):
            if child not in tree:
                tree.append(child)
                queue.append(child)
    return tree


def process_name(argv: Sequence[str], *, root: bool) -> str:
    """What a process of ``serve --workers N`` is, from its command line: ``front`` (the
    root), ``asr-server``, a worker's own name (``--worker-id``), or its program's name."""
    if root:
        return "front"
    if "asr-server" in argv:
        return "asr-server"
    names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--worker-id"]
    if names:
        return names[-1]  # the last of a flag wins, as in the gateway's own parser
    return Path(argv[0]).name if argv else "?"


def parse_udp_table(text: str, inodes: set[str]) -> tuple[int, int]:
    """(datagrams dropped, bytes queued) over the sockets in ``/proc/net/udp`` (or udp6)
    text whose inode is in ``inodes``: drops because a receive buffer was full, and bytes
    waiting to be read (a backlog)."""
    drops = queued = 0
    for line in text.splitlines()[1:]:
        # sl local remote st tx_queue:rx_queue tr retrnsmt uid timeout inode ref pointer drops
        fields = line.split()
        if len(fields) > 12 and fields[9] in inodes:
            queued += int(fields[4].split(":")[1], 16)
            drops += int(fields[12])
    return drops, queued


def socket_inodes(pid: int | str) -> set[str]:
    """The inodes of the sockets ``pid`` (or ``"self"``) has open; empty if it is gone."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def udp_sockets(pids: Iterable[int | str] = ("self",)) -> dict[str, int]:
    """UDP drops and queued bytes over every socket of ``pids``, from the kernel's tables
    (this network namespace's); empty off Linux."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    drops = queued = 0
    try:
        for table in UDP_TABLES:
            d, q = parse_udp_table(Path(table).read_text(encoding="ascii"), inodes)
            drops, queued = drops + d, queued + q
    except (OSError, IndexError, ValueError):
        return {}
    return {"udp_drops": drops, "udp_queued": queued}


def all_stats() -> list[ProcStat]:
    """Every process this machine's ``/proc`` shows."""
    stats = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := read_stat(entry)) is not None:
                stats.append(stat)
    return stats


def read_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def rss_mb(pid: int | str) -> float | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text(encoding="ascii").split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def sum_by_name(values: Iterable[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in values:
        out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree: CPU seconds so far per process name (processes with
    the same name added), each named process's main thread's CPU (its event loop's, for an
    asyncio program), memory, and UDP sockets."""

    pids: tuple[int, ...]
    cpu_s: Mapping[str, float]
    main_thread_cpu_s: Mapping[str, float]
    rss_mb: float | None
    udp: Mapping[str, int]

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


def sample_tree(root: int) -> TreeSample:
    stats = all_stats()
    by_pid = {stat.pid: stat for stat in stats}
    pids = [pid for pid in descendants(stats, root) if pid in by_pid]
    names = {pid: process_name(read_argv(pid), root=pid == root) for pid in pids}
    main: list[tuple[str, float]] = []
    for pid in pids:
        thread = read_stat(f"{pid}/task/{pid}")  # its main thread alone
        if thread is not None:
            main.append((names[pid], thread.cpu_s))
    sizes = [rss_mb(pid) for pid in pids]
    return TreeSample(
        pids=tuple(pids),
        cpu_s=sum_by_name((names[pid], by_pid[pid].cpu_s) for pid in pids),
        main_thread_cpu_s=sum_by_name(main),
        rss_mb=sum(s for s in sizes if s is not None) if any(sizes) else None,
        udp=udp_sockets(pids),
    )


def deltas(first: Mapping[str, float], last: Mapping[str, float]) -> dict[str, float]:
    """Per name, how much ``last`` grew over ``first`` (names present in both: a process
    that started or ended in between has no interval to report)."""
    return {name: last[name] - first[name] for name in last if name in first}
