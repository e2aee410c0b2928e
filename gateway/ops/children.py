"""Child processes the gateway keeps running: the media workers and the ASR server.

Each child serves HTTP on a Unix socket in a private folder (0700, the sockets 0600: only
the gateway's own user can connect, never another local user, never the network). A
child that dies is started again, after a pause that grows while it keeps dying soon after
starting (a model that cannot load must not spin the CPU). Its ``/health`` over the socket
says when it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gateway.errors import ConfigError, GatewayError
from gateway.ops.procstat import read_stat

logger = logging.getLogger(__name__)

READY_POLL_S = 0.2
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # then 10 s between attempts
STABLE_AFTER_S = 30.0  # a child that lived this long starts the back-off again
HEALTH_TIMEOUT_S = 2.0
OUTPUT_DRAIN_S = 1.0  # for a child that exited, to read what it last wrote
ERROR_MARK = ": error: "  # "local-ai-gateway: error: …", how a command says why it stopped


@dataclass
class Child:
    """One supervised process. ``argv`` runs it; it must serve ``/health`` on ``socket``."""

    name: str
    argv: Sequence[str]
    socket: Path
    ready_timeout_s: float = 300.0  # a large model on first use downloads first
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    last_error: str = ""  # its last "error:" line: why it could not start
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    _output: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: bool = False

    @property
    def http(self) -> aiohttp.ClientSession:
        """A client for the child's socket (``http://child/...``); made on first use."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                base_url="http://localhost",
                connector=aiohttp.UnixConnector(path=str(self.socket)),
            )
        return self._http

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Starts the process and waits until it is ready (or raises ChildFailed); then
        watches it for the rest of its life."""
        await self._spawn()
        await self._until_ready()
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name=f"watch-{self.name}"
        )

    async def _spawn(self) -> None:
        self.ready = False
        self.last_error = ""
        # Its own process group: Ctrl+C in a terminal reaches the front alone, which stops
        # the children in order; the child watches the front, and leaves if it is gone.
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            process_group=0,
            env={**os.environ, FRONT_PID_ENV: str(os.getpid())},
        )
        assert self.process.stdout is not None
        self._output = asyncio.get_running_loop().create_task(
            self._relay_output(self.process.stdout), name=f"output-{self.name}"
        )
        logger.info("%s started (pid %d)", self.name, self.process.pid)

    async def _relay_output(self, stream: asyncio.StreamReader) -> None:
        """The child's log lines go where ours go (one log for the whole gateway), except
        an ``error:`` line that ends its start-up: the front says it once, as its own."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the reader's 64 KiB limit: dropped
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace")
            head, sep, reason = text.partition(ERROR_MARK)
            if sep and head.startswith("local-ai-gateway"):
                self.last_error = reason.strip()
                continue
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (OSError, ValueError):  # our own stderr is gone (a closed pipe)
                pass  # reading on matters more: a child blocked on a full pipe hangs

    async def _until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                if self._output is not None:  # its last words, before they are read
                    await asyncio.wait({self._output}, timeout=OUTPUT_DRAIN_S)
                raise ChildFailed(
                    f"{self.name}: {self.last_error}"
                    if self.last_error
                    else f"{self.name} exited with status {self.process.returncode} while "
                    "starting; its log lines above say why"
                )
            if await self.healthy():
                self.ready = True
                return
            await asyncio.sleep(READY_POLL_S)
        raise ChildFailed(f"{self.name} was not ready within {self.ready_timeout_s:.0f} s")

    async def healthy(self) -> bool:
        return await self.health() is not None

    async def health(self) -> dict[str, object] | None:
        """What its ``/health`` says; None when it does not answer 200 with JSON."""
        try:
            async with self.http.get(
                "/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def cpu_seconds(self) -> float | None:
        """The CPU time its process has used (user + system, every thread), from Linux's
        ``/proc``; None elsewhere, or while it is not running."""
        if self.process is None or self.process.returncode is not None:
            return None
        reading = read_stat(self.process.pid)
        return None if reading is None else reading.cpu_s

    async def _watch(self) -> None:
        attempt = 0
        while True:
            assert self.process is not None
            started = time.monotonic()
            status = await self.process.wait()
            self.ready = False
            if self._stopping:
                return
            logger.error("%s (pid %d) died with status %d", self.name, self.process.pid, status)
            attempt = 0 if time.monotonic() - started > STABLE_AFTER_S else attempt
            delay = RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]
            attempt += 1
            if self._http is not None:  # its pooled connections went with it
                await self._http.close()
            await asyncio.sleep(delay)
            self.restarts += 1
            try:
                await self._spawn()
                await self._until_ready()
            except ChildFailed as exc:
                logger.error("%s", exc)  # the loop waits for its exit and tries again
                if self.process.returncode is None:
                    self.process.kill()
            except OSError as exc:  # cannot even start (the interpreter is gone?)
                logger.error("%s cannot be started again: %s", self.name, exc)
                await asyncio.sleep(RESTART_DELAYS_S[-1])

    def signal_again(self) -> None:
        """A second SIGTERM while it drains: it stops waiting for replies."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM (the child drains), then SIGKILL after ``timeout_s``."""
        self._stopping = True
        # The watcher first: mid-restart, it may have just started the process to stop.
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                logger.warning("%s did not stop in %.0f s: killing it", self.name, timeout_s)
                process.kill()
                await process.wait()
        if self._output is not None:  # its last lines (how its drain went) first
            await asyncio.wait({self._output}, timeout=OUTPUT_DRAIN_S)
        if self._output is not None:
            self._output.cancel()
            await asyncio.gather(self._output, return_exceptions=True)
        if self._http is not None:
            await self._http.close()


FRONT_PID_ENV = "LOCAL_AI_GATEWAY_FRONT_PID"
PARENT_POLL_S = 1.0


def front_gone() -> bool:
    """In a child the front started: whether the front has died (the child was handed to
    another parent). False in a process the front did not start."""
    front = os.environ.get(FRONT_PID_ENV)
    return bool(front) and os.getppid() != int(front or 0)


def remove_socket(path: Path) -> None:
    """A server's socket file, at its exit (Python 3.11's server leaves it). A child whose
    front died also removes the front's private folder, once it is empty: the front is
    not there to, and the last child out finds it so."""
    with contextlib.suppress(OSError):
        path.unlink()
    if front_gone():
        with contextlib.suppress(OSError):
            path.parent.rmdir()


async def leave_with_front(stop: Callable[[], None]) -> None:
    """In a child: call ``stop`` (a drain, as on SIGTERM) once the front that started it
    is gone (it was killed: its children are handed to another parent). Returns at once
    in a process the front did not start."""
    front = os.environ.get(FRONT_PID_ENV)
    if not front:
        return
    while not front_gone():  # noqa: ASYNC110 - no event tells of a parent's death
        await asyncio.sleep(PARENT_POLL_S)
    logger.warning("the gateway's front process %s is gone: stopping", front)
    stop()


class ChildFailed(GatewayError):
    """A child process could not be started or made ready."""

    code = "child_failed"


def private_folder(prefix: str) -> Path:
    """A fresh folder for the children's sockets that only this user can enter: in
    ``$XDG_RUNTIME_DIR`` when there is one (per-user, on tmpfs), else the temp folder."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    parent = base if base and os.path.isdir(base) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mkdtemp makes it 0700


def gateway_command(*args: str) -> list[str]:
    """``python -m gateway ARGS`` with this interpreter."""
    return [sys.executable, "-m", "gateway", *args]


def remove_folder(path: Path) -> None:
    """The sockets' folder, once every child has stopped."""
    for entry in path.iterdir():
        with contextlib.suppress(OSError):
            entry.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def prepare_socket_path(path: Path) -> None:
    """Makes the socket's folder (0700, if missing) and removes a socket left by a server
    that died; refuses one that a running server still answers, or a file that is not a
    socket."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("--socket", f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: a leftover
            return
    raise ConfigError("--socket", f"{path}: another ASR server is already serving there")


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Files (a socket) made in this block are 0600 from the start, not chmod-ed after a
    window. The umask is the process's: call it while nothing else makes files."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)
