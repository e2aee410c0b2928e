"""Node packages that tests install into a folder of this checkout (``npm ci``), shared by
the Nuxt example's tests and the third-party WHIP client's."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def packages_are_fresh(folder: Path) -> bool:
    """Whether ``npm ci`` has run since the lock file changed: it writes this copy of the
    lock file, so an older copy means stale packages."""
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    return installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One install or build in ``folder`` at a time (other test runs may share the tree)."""
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"npm-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
