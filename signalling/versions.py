"""Which releases of a library an adapter over its internals was tested with.

The ICE adapter (:mod:`signalling.ice`) and the audio receiver
(:mod:`signalling.audio_receiver`) reach into aioice and aiortc internals; each names the
releases it was tested with, and this finds an installed one outside them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

# package → [lowest, first untested) as (major, minor)
Release = tuple[int, int]
Tested = Mapping[str, tuple[Release, Release]]

# The aiortc releases both adapters were tested with: one range, so they move together.
AIORTC_TESTED: tuple[Release, Release] = ((1, 16), (1, 17))  # 1.16.0


@dataclass(frozen=True)
class Untested:
    package: str
    version: str  # as installed
    tested: str  # e.g. ">=1.16,<1.17"


def untested_release(tested: Tested, installed: Mapping[str, str] | None = None) -> Untested | None:
    """The first package whose installed release is outside ``tested``, or None.
    ``installed`` maps package → version, for tests; by default it is read from metadata."""
    for package, (lowest, untested) in tested.items():
        version = installed[package] if installed else _installed_version(package)
        match = re.match(r"(\d+)\.(\d+)", version)
        release = (int(match[1]), int(match[2])) if match else (-1, -1)
        if not lowest <= release < untested:
            return Untested(package, version, f">={_dotted(lowest)},<{_dotted(untested)}")
    return None


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def _dotted(release: tuple[int, int]) -> str:
    return f"{release[0]}.{release[1]}"
