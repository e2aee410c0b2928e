"""A process's ``/proc/<pid>/stat`` (Linux): parent, state and CPU time. The parser takes the
file's text, so that it is tested without a process; the reader returns None off Linux or
once the process is gone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime, every thread of the process (not its waited-for children)
    state: str = "?"  # R running, S sleeping, Z exited and not yet reaped, ...

    @property
    def cpu_s(self) -> float:
        return self.cpu_ticks / CLOCK_TICKS


def parse_stat(text: str) -> ProcStat | None:
    """``/proc/<pid>/stat`` (or ``/proc/<pid>/task/<tid>/stat``). The command name, in
    parentheses, may hold spaces and parentheses itself: the fields follow its last ``)``."""
    head, paren, rest = text.rpartition(")")
    if not paren:
        return None
    fields = rest.split()
    try:
        pid = int(head.split("(", 1)[0])
        # After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
        # cmajflt utime stime ...
        return ProcStat(pid, int(fields[1]), int(fields[11]) + int(fields[12]), fields[0])
    except (IndexError, ValueError):
        return None


def read_stat(pid: int | str) -> ProcStat | None:
    """``pid``'s stat (or ``"self"``'s, or one thread's: ``"PID/task/TID"``); None where
    there is no such process or no ``/proc``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_stat(text)
