"""What every benchmark shares: how it plugs into the CLI, machine facts, statistics, output."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Versions that move the numbers; a package that is absent is reported as null.
PACKAGES = (
    "torch",
    "openai-whisper",
    "faster-whisper",
    "ctranslate2",
    "aiortc",
    "aioice",
    "av",
    "onnxruntime",
    "silero-vad",
    "piper-tts",
    "jiwer",
    "numpy",
)


@dataclass(frozen=True)
class Benchmark:
    """One subcommand. ``add_arguments`` must give every option a default, since ``all``
    runs each benchmark with its defaults plus the shared ``--quick``/``--out``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """Enough to tell two runs' machines apart, and how busy this one was."""
    torch = sys.modules.get("torch")  # only if a benchmark already paid for importing it
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "versions": package_versions(),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class Recording:
    """A benchmark run's common record: when it started, how long it took, and the machine
    before and after (the load average tells a reader whether other work shared the
    cores)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started_at = now_iso()
        self._started = time.perf_counter()
        self._before = machine_info()

    def machine_after(self) -> dict[str, Any]:
        machine = machine_info()
        machine["load_average_before"] = self._before["load_average"]
        return machine

    def header(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "started_at": self.started_at,
            "duration_s": round(time.perf_counter() - self._started, 1),
            "machine": machine,
        }
