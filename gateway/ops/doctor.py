"""``local-ai-gateway doctor``: the checks for what users get wrong, each with its fix.

Every check is a small function of the :class:`Config` (plus, as keyword arguments, what a
test replaces: the clock, the socket binder, the engine loader, the platform) that returns
one or more :class:`Check` lines. :func:`run_doctor` prints them as they finish::

    ok    python: 3.11.9 (/usr/bin/python3)
    warn  certificate: no server certificate in certs yet — it will be made on first serve
    fail  port: another program (or a running gateway) uses port 8001 — stop it, or ...

and returns 1 when any check failed. It takes the same flags as ``serve``, so it checks the
configuration the user is about to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.metadata
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO, TypeVar

import ifaddr
import numpy as np
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from aiortc.rtcicetransport import parse_stun_turn_uri
from cryptography import x509

from certs.authority import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    SERVER_CERT_NAME,
    SERVER_KEY_NAME,
    certificate_warnings,
)
from gateway.conversation.endofturn import TurnJudge
from gateway.conversation.llm import OllamaChat
from gateway.errors import ASRError, CertificateError, ConfigError, IcePolicyError, ModelLoadError
from gateway.http.app import (
    asr_api_key,
    llm_settings,
    load_configured_tts,
    load_turn_judge,
    tts_engine_name,
)
from gateway.http.relay import GATEWAY_USER, load_turn_secret
from gateway.ops.config import Config, is_loopback, load_config, service_hostname
from gateway.ops.exposure import exposed_on, local_addresses, ollama_port
from media.asr.base import ASREngine
from media.asr.engines import load_engine
from media.asr.remote import RemoteASR, parse_asr_url
from media.errors import MediaError, TTSError, TTSVoiceMissing
from media.tts.base import TTSEngine
from media.vad import silero_model_path
from signalling.ice import IcePolicy, resolve_addresses
from signalling.turn import TurnRelay

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<6}{self.name}: {self.detail}"
        if self.fix and self.status != "ok":
            text += f" — {self.fix}"
        return text


CheckFn = Callable[[Config], Sequence[Check]]
# (host, port, SOCK_STREAM or SOCK_DGRAM): bind as the server would, then release; OSError.
Binder = Callable[[str, int, socket.SocketKind], None]

PACKAGES = (
    "aiortc",
    "aioice",
    "aiohttp",
    "av",
    "openai-whisper",
    "faster-whisper",
    "ollama",
    "onnxruntime",
    "cryptography",
    "pyjwt",
)
MIN_AIOHTTP = (3, 14, 3)  # what pyproject requires; an older one came from elsewhere
MIN_PYTHON = (3, 10)
# A first run downloads a named model; beyond this the doctor reports it rather than hang.
ASR_LOAD_TIMEOUT_S = 600.0
TTS_CHECK_TIMEOUT_S = 120.0  # a named Piper voice downloads on first use
_T = TypeVar("_T")
OLLAMA_PROBE_TIMEOUT_S = 0.5  # a local address answers at once or not at all
SUBPROCESS_TIMEOUT_S = 3.0
TURN_PROBE_TIMEOUT_S = 5.0  # aioice's own wait for a relayed candidate
GPU_FIX = "install the CUDA build of torch: see README GPUs"
OUR_RULE = "Local AI Gateway"


# --- Python, packages, torch -------------------------------------------------------------


def check_python(
    config: Config, *, version: tuple[int, ...] = tuple(sys.version_info[:3])
) -> list[Check]:
    shown = ".".join(map(str, version))
    if version[:2] < MIN_PYTHON:
        return [
            Check(
                "python",
                "fail",
                f"{shown} is too old ({sys.executable})",
                "install Python 3.11 (3.10 at least) and make the .venv with it",
            )
        ]
    return [Check("python", "ok", f"{shown} ({sys.executable})")]


def _version_tuple(text: str) -> tuple[int, ...]:
    # "2.13.0+cpu" → (2, 13, 0); "3.15.0a1" → (3, 15, 0): enough for a minimum check.
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def check_packages(
    config: Config, *, version: Callable[[str], str] = importlib.metadata.version
) -> list[Check]:
    found: dict[str, str] = {}
    checks: list[Check] = []
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(
                Check(
                    "packages",
                    "fail",
                    f"{name} is not installed in {sys.prefix}",
                    f"`pip install {name}` in this environment, or rerun `make setup`",
                )
            )
    aiohttp = found.get("aiohttp")
    if aiohttp is not None and _version_tuple(aiohttp) < MIN_AIOHTTP:
        wanted = ".".join(map(str, MIN_AIOHTTP))
        checks.append(
            Check(
                "packages",
                "warn",
                f"aiohttp {aiohttp} is older than {wanted}, which the gateway requires",
                f"`pip install -U 'aiohttp>={wanted}'`",
            )
        )
    if found:
        listed = ", ".join(f"{name} {v}" for name, v in found.items())
        checks.insert(0, Check("packages", "ok", listed))
    return checks


@dataclass(frozen=True)
class TorchInfo:
    version: str
    cuda_build: str | None  # the CUDA version torch was built for; None for a CPU build
    cuda_available: bool
    device_name: str | None


def probe_torch() -> TorchInfo | None:
    """None when torch is not installed. Importing it takes a second or two."""
    try:
        import torch
    except ImportError:
        return None
    available = bool(torch.cuda.is_available())
    return TorchInfo(
        version=str(torch.__version__),
        cuda_build=torch.version.cuda,
        cuda_available=available,
        device_name=str(torch.cuda.get_device_name(0)) if available else None,
    )


def _has_nvidia_driver() -> bool:
    return shutil.which("nvidia-smi") is not None


def check_torch(
    config: Config,
    *,
    probe: Callable[[], TorchInfo | None] = probe_torch,
    nvidia_driver: Callable[[], bool] = _has_nvidia_driver,
) -> list[Check]:
    info = probe()
    if info is None:
        return [
            Check(
                "torch",
                "fail",
                "torch is not installed (openai-whisper and --asr-device auto need it)",
                f"rerun `make setup`; for an NVIDIA GPU, {GPU_FIX}",
            )
        ]
    build = f"CUDA {info.cuda_build} build" if info.cuda_build else "CPU build"
    where = f"torch {info.version} ({build})"
    if info.cuda_available:
        runs = "ASR runs on the CPU (--asr-device cpu)" if config.asr_device == "cpu" else ""
        detail = f"{where}, GPU {info.device_name}"
        return [Check("torch", "ok", f"{detail}; {runs}" if runs else detail)]
    if info.cuda_build:
        # A CUDA build that sees no GPU: the driver, not torch, is what to fix.
        problem = f"{where} sees no CUDA GPU"
        fix = "check the NVIDIA driver with `nvidia-smi`; torch needs a driver for CUDA "
        fix += f"{info.cuda_build} or newer"
    else:
        problem = f"{where} cannot use a GPU"
        fix = GPU_FIX
    if config.asr_device == "cuda":
        return [Check("torch", "fail", f"--asr-device cuda, but {problem}", fix)]
    if config.asr_device == "auto" and (info.cuda_build or nvidia_driver()):
        # This machine has an NVIDIA driver (or a CUDA torch): the user surely wants the GPU.
        return [Check("torch", "warn", f"{problem}; ASR falls back to the CPU", fix)]
    return [Check("torch", "ok", f"{where}; ASR runs on the CPU")]


# --- models ------------------------------------------------------------------------------


class _LoadTimeout(Exception):
    pass


def _load_within(load: Callable[[], _T], timeout_s: float) -> _T:
    """Run ``load`` in a daemon thread so a stuck download cannot hold the doctor (or its
    exit) beyond ``timeout_s``."""
    done: queue.Queue[_T | BaseException] = queue.Queue(maxsize=1)

    def work() -> None:
        try:
            done.put(load())
        except BaseException as exc:  # handed to the caller, which re-raises it
            done.put(exc)

    threading.Thread(target=work, name="doctor-load", daemon=True).start()
    try:
        result = done.get(timeout=timeout_s)
    except queue.Empty:
        raise _LoadTimeout from None
    if isinstance(result, BaseException):
        raise result
    return result


def check_asr(
    config: Config,
    *,
    loader: Callable[[str, str, str], ASREngine] = load_engine,
    timeout_s: float = ASR_LOAD_TIMEOUT_S,
) -> list[Check]:
    if config.asr_url:
        return asyncio.run(check_asr_server(config))
    what = f"{config.asr_engine} {config.asr_model}"
    started = time.monotonic()
    try:
        engine = _load_within(
            lambda: loader(config.asr_engine, config.asr_model, config.asr_device), timeout_s
        )
    except _LoadTimeout:
        return [
            Check(
                "asr model",
                "fail",
                f"{what} did not load within {timeout_s:.0f} s",
                "a named model is downloaded on first use: check the network, or pass a "
                "local path with --asr-model",
            )
        ]
    except ModelLoadError as exc:
        return [Check("asr model", "fail", str(exc))]
    except Exception as exc:  # e.g. CUDA errors from torch, before the engine wraps them
        return [
            Check(
                "asr model",
                "fail",
                f"cannot load {what} ({type(exc).__name__}: {exc})",
                "try --asr-device cpu; if that works, the GPU set-up is at fault",
            )
        ]
    seconds = time.monotonic() - started
    return [Check("asr model", "ok", f"{what} loaded on {engine.device} in {seconds:.1f} s")]


def check_vad(config: Config, *, locate: Callable[[], Path] = silero_model_path) -> list[Check]:
    try:
        path = locate()
    except ModelLoadError as exc:
        return [Check("vad model", "fail", str(exc), "rerun `make setup`")]
    return [Check("vad model", "ok", f"Silero VAD at {path}")]


def check_turns(
    config: Config, *, load: Callable[[Config], TurnJudge] = load_turn_judge
) -> list[Check]:
    """What ends a turn, and that the end-of-turn model (if any) loads and answers."""
    try:
        judge = load(config)
    except MediaError as exc:  # a --turn-model that is missing or corrupt
        return [Check("turn detection", "fail", str(exc), "fix --turn-model, or omit it")]
    # The model answered once as it loaded (SmartTurn warms up), so loading is the test.
    if not judge.decides:
        detail = f"a fixed {config.vad_silence_ms} ms silence ends each turn"
        return [Check("turn detection", "ok", detail)]
    if judge.uses_model:
        detail = "the transcript and the Smart Turn model decide (model in use)"
        return [Check("turn detection", "ok", detail)]
    detail = "the transcript decides; no end-of-turn model in use"
    if config.turn_detection == "auto":
        fix = "make setup installs it (pipecat-ai, no dependencies), or pass --turn-model PATH"
        return [Check("turn detection", "warn", detail, fix)]
    return [Check("turn detection", "ok", detail)]


def check_tts(
    config: Config,
    *,
    loader: Callable[[Config], TTSEngine | None] | None = None,
    timeout_s: float = TTS_CHECK_TIMEOUT_S,
) -> list[Check]:
    """Which voice speaks the replies, and that it really speaks (one short sentence)."""
    name = tts_engine_name(config)
    if name == "none":
        if config.tts_engine == "auto":
            return [
                Check(
                    "tts",
                    "warn",
                    "Piper is not installed: replies are text only",
                    "pip install 'local-ai-gateway[tts]' (Piper is GPL-3.0), or use "
                    "--tts-engine openai with a speech server",
                )
            ]
        return [Check("tts", "ok", "spoken replies off (--tts-engine none)")]

    def load_and_speak() -> tuple[TTSEngine | None, float]:
        engine = (loader or load_configured_tts)(config)
        if engine is None:
            return None, 0.0
        samples = sum(len(chunk) for chunk in engine.synthesize("Ready."))
        return engine, samples / engine.sample_rate

    try:
        engine, seconds = _load_within(load_and_speak, timeout_s)
    except _LoadTimeout:
        return [Check("tts", "fail", f"{name} did not speak within {timeout_s:.0f} s")]
    except TTSError as exc:
        fix = "check --tts-voice" if isinstance(exc, TTSVoiceMissing) else ""
        return [Check("tts", "fail", str(exc), fix)]
    except ConfigError as exc:  # an unreadable --tts-api-key-file
        return [Check("tts", "fail", str(exc))]
    if engine is None or seconds <= 0:
        return [Check("tts", "fail", f"{name} gave no audio for a test sentence")]
    return [Check("tts", "ok", f"{engine.name} voice {engine.voice} speaks ({seconds:.1f} s)")]


# --- Ollama ------------------------------------------------------------------------------


async def _ollama_checks(
    config: Config, addresses: Sequence[str], probe_timeout_s: float
) -> list[Check]:
    settings = llm_settings(config)
    chat = OllamaChat(settings)
    try:
        status = await chat.check()  # bounded by the client's connect and list timeouts
    finally:
        await chat.close()
    host, model = settings.host, settings.model
    checks: list[Check]
    if status.ok:
        checks = [Check("ollama", "ok", status.message)]
    elif status.answered_with_error:
        checks = [Check("ollama", "fail", status.message, "see the log of `ollama serve`")]
    elif status.foreign:
        checks = [
            Check(
                "ollama",
                "fail",
                f"{host} answers, but not as Ollama does",
                "another service listens there: point --ollama-host at Ollama",
            )
        ]
    elif status.reachable:
        checks = [
            Check(
                "ollama",
                "fail",
                f"Ollama at {host} does not have the model {model!r}",
                f"`ollama pull {model}` (or choose another with --ollama-model)",
            )
        ]
    else:
        checks = [
            Check(
                "ollama",
                "fail",
                f"cannot reach Ollama at {host}",
                "start it with `ollama serve`, or point --ollama-host at it",
            )
        ]

    if is_loopback(service_hostname(config.ollama_host)) and addresses:
        port = ollama_port(config.ollama_host)
        exposed = await exposed_on(addresses, port, probe_timeout_s)
        if exposed:
            where = ", ".join(f"{a}:{port}" for a in exposed)
            checks.append(
                Check(
                    "ollama",
                    "warn",
                    f"Ollama also answers on {where}",
                    "Ollama listens beyond loopback and has no authentication: set "
                    "OLLAMA_HOST=127.0.0.1 for `ollama serve` and restart it",
                )
            )
    return checks


def check_ollama(
    config: Config,
    *,
    addresses: Callable[[], Sequence[str]] = local_addresses,
    probe_timeout_s: float = OLLAMA_PROBE_TIMEOUT_S,
) -> list[Check]:
    """Runs its own event loop: call it where none is running (or from a worker thread)."""
    return asyncio.run(_ollama_checks(config, list(addresses()), probe_timeout_s))


# --- certificate -------------------------------------------------------------------------


def _split_advice(warning: str) -> tuple[str, str]:
    # certificate_warnings writes "what is wrong; what to do".
    detail, sep, fix = warning.rpartition("; ")
    return (detail, fix) if sep else (warning, "")


def check_certificate(config: Config, *, now: datetime | None = None) -> list[Check]:
    if config.no_tls:
        return [Check("certificate", "ok", "TLS off (loopback only)")]
    now = now or datetime.now(UTC)
    cert_path = config.cert_dir / SERVER_CERT_NAME
    key_path = config.cert_dir / SERVER_KEY_NAME
    ca_cert, ca_key = config.cert_dir / CA_CERT_NAME, config.cert_dir / CA_KEY_NAME
    if not cert_path.exists():
        if ca_cert.exists() != ca_key.exists():
            present, missing = (ca_cert, ca_key) if ca_cert.exists() else (ca_key, ca_cert)
            return [
                Check(
                    "certificate",
                    "fail",
                    f"no server certificate, and none can be made: {present} exists but "
                    f"{missing} does not",
                    "restore it, or delete both to make a new CA (every device must then "
                    "trust the new one)",
                )
            ]
        # A wildcard bind gets only loopback names: the address clients use must be named.
        host = "<your LAN or VPN address>" if config.host in ("0.0.0.0", "::") else config.host
        return [
            Check(
                "certificate",
                "warn",
                f"no server certificate in {config.cert_dir} yet",
                "it will be made on first serve (or now: "
                f"`local-ai-gateway certs --host {host} --cert-dir {config.cert_dir}`)",
            )
        ]
    if not key_path.exists():
        return [
            Check(
                "certificate",
                "fail",
                f"{cert_path} exists but its key {key_path} is missing",
                "restore the key, or delete the certificate to have a new pair made",
            )
        ]
    try:
        warnings = certificate_warnings(cert_path, config.host, now=now)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        # What serve will do with the pair: also proves the key belongs to the certificate.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (CertificateError, ValueError, OSError, ssl.SSLError) as exc:
        return [
            Check(
                "certificate",
                "fail",
                f"cannot use {cert_path}: {exc}",
                "delete it and its key to have a new pair made at the next serve",
            )
        ]
    if warnings:
        return [Check("certificate", "warn", *_split_advice(w)) for w in warnings]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = []
    until = cert.not_valid_after_utc.date().isoformat()
    return [Check("certificate", "ok", f"{cert_path} for {', '.join(names)}; valid until {until}")]


# --- network -----------------------------------------------------------------------------


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> None:
    """Bind every address ``host`` resolves to, as the server will, and release them."""
    for family, socktype, proto, _name, address in socket.getaddrinfo(
        host, port, type=kind, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, socktype, proto) as sock:
            if kind == socket.SOCK_STREAM and os.name != "nt":
                # asyncio's server sets it on POSIX, so a port in TIME_WAIT is not "in use".
                # (On Windows it would let a second program take a bound port.)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)


def _codes(*names: str) -> set[int]:
    # On Windows sockets report WSA codes (10048, 10013...), not only the C errno values.
    return {code for name in names if (code := getattr(errno, name, None)) is not None}


_IN_USE = _codes("EADDRINUSE", "WSAEADDRINUSE")
_NOT_HERE = _codes("EADDRNOTAVAIL", "WSAEADDRNOTAVAIL")
_DENIED = _codes("EACCES", "EPERM", "WSAEACCES")


def _problem(exc: OSError) -> Literal["in use", "not here", "denied", "other"]:
    codes = {exc.errno, getattr(exc, "winerror", None)}
    if codes & _IN_USE:
        return "in use"
    if codes & _NOT_HERE:
        return "not here"
    if codes & _DENIED:
        return "denied"
    return "other"


def _excluded_ports_hint(protocol: str) -> str:
    # Hyper-V and WSL reserve port ranges on Windows; binding one fails with "access denied".
    return f"see `netsh interface ipv4 show excludedportrange protocol={protocol}`"


def check_port(
    config: Config, *, bind: Binder = bind_socket, platform: str = os.name
) -> list[Check]:
    host, port = config.host, config.port
    try:
        bind(host, port, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [Check("port", "fail", f"cannot resolve --host {host}: {exc}", "check --host")]
    except OSError as exc:
        problem = _problem(exc)
        if problem == "in use":
            finder = (
                f"`netstat -ano | findstr :{port}`"
                if platform == "nt"
                else f"`ss -ltnp 'sport = :{port}'`"
            )
            return [
                Check(
                    "port",
                    "fail",
                    f"another program (or a running gateway) uses port {port}",
                    f"stop it ({finder} shows which), or choose another --port",
                )
            ]
        if problem == "not here":
            return [
                Check(
                    "port",
                    "fail",
                    f"{host} is not an address of this machine",
                    "check --host; for a VPN address, bring the WireGuard interface up first",
                )
            ]
        if problem == "denied":
            fix = "choose another --port"
            if port < 1024 and platform != "nt":
                fix = "ports below 1024 need root: choose a --port from 1024 up"
            elif platform == "nt":
                fix = f"Windows reserves it ({_excluded_ports_hint('tcp')}): {fix}"
            return [Check("port", "fail", f"not allowed to listen on port {port}", fix)]
        return [Check("port", "fail", f"cannot listen on {host}:{port}: {exc}", "check --host")]
    return [Check("port", "ok", f"TCP {host}:{port} is free")]


def resolve_ice_address(value: str) -> list[str]:
    """The addresses the gateway itself will use for this ``--ice-address`` entry (the ICE
    adapter's own rules); ``[]`` when it names nothing on this machine."""
    try:
        return resolve_addresses(IcePolicy((value,)))
    except IcePolicyError:
        return []


def _sample_ports(lo: int, hi: int) -> list[int]:
    # Both ends catch an off-by-one range; the middle catches a program squatting inside.
    return sorted({lo, min(lo + 1, hi), (lo + hi) // 2, max(hi - 1, lo), hi})


def check_udp(
    config: Config,
    *,
    bind: Binder = bind_socket,
    resolve: Callable[[str], list[str]] = resolve_ice_address,
    platform: str = os.name,
) -> list[Check]:
    checks: list[Check] = []
    addresses: list[str] = []
    if config.ice_addresses:
        for value in config.ice_addresses:
            found = resolve(value)
            if not found:
                checks.append(
                    Check(
                        "udp ports",
                        "fail",
                        f"--ice-address {value} is neither an address nor an interface here",
                        "check the name (`ip addr`, or `ipconfig` on Windows); for a VPN, "
                        "bring its interface up first",
                    )
                )
            addresses += found
    else:
        addresses = [config.host]
    addresses = list(dict.fromkeys(addresses))
    ports = [0] if config.udp_ports is None else _sample_ports(*config.udp_ports)

    busy: list[str] = []
    for address in addresses:
        for port in ports:
            where = f"{address}:{port}" if port else address
            try:
                bind(address, port, socket.SOCK_DGRAM)
            except OSError as exc:
                problem = _problem(exc)
                if problem == "in use":
                    busy.append(where)
                    continue
                if problem == "not here":
                    detail = f"{address} is not an address of this machine"
                    fix = "check --ice-address and --host; is the VPN interface up?"
                elif problem == "denied":
                    detail = f"not allowed to bind UDP {where}"
                    fix = "choose another --udp-ports range"
                    if platform == "nt":
                        fix = f"Windows reserves it ({_excluded_ports_hint('udp')}): {fix}"
                else:
                    detail, fix = f"cannot bind UDP {where}: {exc}", "check --udp-ports"
                checks.append(Check("udp ports", "fail", detail, fix))
                break  # one line per address is enough
    if any(c.status == "fail" for c in checks) or not addresses:
        return checks
    shown = ", ".join(addresses)
    if config.udp_ports is None:
        checks.append(
            Check(
                "udp ports",
                "ok",
                f"OS-chosen UDP ports on {shown} (set --udp-ports LO-HI to open one range "
                "in a firewall)",
            )
        )
        return checks
    lo, hi = config.udp_ports
    if busy:
        checks.append(
            Check(
                "udp ports",
                "warn",
                f"UDP {', '.join(busy)} already in use",
                f"another program uses part of {lo}-{hi}: choose a range it leaves free",
            )
        )
    # Each session binds one UDP port per ICE address.
    needed = config.max_sessions * len(addresses)
    if hi - lo + 1 < needed:
        checks.append(
            Check(
                "udp ports",
                "warn",
                f"{lo}-{hi} holds {hi - lo + 1} ports; {config.max_sessions} sessions on "
                f"{len(addresses)} address(es) need {needed}",
                "widen --udp-ports or lower --max-sessions",
            )
        )
    if not checks:
        sample = ", ".join(map(str, ports))
        checks.append(Check("udp ports", "ok", f"UDP {lo}-{hi} free on {shown} (tried {sample})"))
    return checks


# --- TURN relay --------------------------------------------------------------------------


async def allocate_relay(url: str, username: str, password: str, timeout_s: float) -> str:
    """Asks the TURN server at ``url`` for an allocation, as aioice does for the gateway's
    peer connections; returns the relayed address. Raises TimeoutError, OSError, or
    aioice's TransactionFailed (the server's refusal)."""
    parsed = parse_stun_turn_uri(url)
    transport, protocol = await asyncio.wait_for(
        create_turn_endpoint(
            _Released,
            (parsed["host"], parsed["port"]),
            username,
            password,
            ssl=parsed["scheme"] == "turns",
            transport=parsed["transport"],
        ),
        timeout_s,
    )
    host, port = transport.get_extra_info("sockname")[:2]
    transport.close()  # aioice releases the allocation (a Refresh of lifetime 0), then says so
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(protocol.released, timeout_s)
    return f"{host}:{port}"


class _Released(asyncio.DatagramProtocol):
    """Knows when aioice has given the allocation back (``connection_lost``)."""

    def __init__(self) -> None:
        self.released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.released.done():
            self.released.set_result(None)


async def _probe_relay(relay: TurnRelay, now: float, timeout_s: float) -> list[Check]:
    credential = relay.credential(GATEWAY_USER, now)

    async def probe(url: str) -> Check:
        try:
            address = await allocate_relay(
                url, credential.username, credential.credential, timeout_s
            )
        except TransactionFailed as exc:
            return Check(
                "turn",
                "fail",
                f"{url} refused the gateway's credential: {exc}",
                "--turn-secret-file must hold coturn's static-auth-secret, with use-auth-secret "
                "on; and this machine's clock must be right",
            )
        except TimeoutError:
            return Check(
                "turn",
                "fail",
                f"{url} did not answer within {timeout_s:.0f} s",
                "is coturn running there, and its port open (UDP and/or TCP) on its host?",
            )
        except (OSError, ValueError) as exc:
            return Check("turn", "fail", f"cannot reach {url}: {exc}", "check --turn-url")
        return Check("turn", "ok", f"{url} relays (allocated {address})")

    return list(await asyncio.gather(*(probe(url) for url in relay.urls)))


def check_turn_relay(
    config: Config, *, now: float | None = None, timeout_s: float = TURN_PROBE_TIMEOUT_S
) -> list[Check]:
    """With ``--turn-url``: the secret file is usable, and each TURN URL grants the gateway
    an allocation with a credential made from it. Nothing to say without a relay.
    Runs its own event loop: call it where none is running (or from a worker thread)."""
    if not config.turn_urls or config.turn_secret_file is None:
        return []
    try:
        secret = load_turn_secret(config.turn_secret_file)
    except ConfigError as exc:
        return [Check("turn", "fail", str(exc), "write the secret coturn has, on one line")]
    relay = TurnRelay(config.turn_urls, secret, config.turn_ttl_s)
    return asyncio.run(_probe_relay(relay, time.time() if now is None else now, timeout_s))


# --- firewall hints ----------------------------------------------------------------------


def _python_program() -> str:
    # A venv's python.exe on Windows only launches the base interpreter, and the firewall
    # sees that process; sys._base_executable names it.
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _ufw_state() -> bool | None:
    """Whether ufw is active; None when that cannot be told (``ufw status`` needs root)."""
    ufw = shutil.which("ufw")
    if ufw is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            [ufw, "status"],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
        if "Status: active" in result.stdout:
            return True
        if "Status: inactive" in result.stdout:
            return False
    with contextlib.suppress(OSError, UnicodeDecodeError):
        conf = Path("/etc/ufw/ufw.conf").read_text(encoding="utf-8")
        enabled = re.search(r"^\s*ENABLED\s*=\s*(\S+)", conf, re.MULTILINE)
        if enabled:
            return enabled.group(1).strip("\"'").lower() == "yes"
    return None


def _interface_of(address: str) -> str | None:
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if (ip.ip if isinstance(ip.ip, str) else ip.ip[0]) == address:
                return adapter.nice_name
    return None


def check_firewall(
    config: Config,
    *,
    platform: str = os.name,
    has_ufw: Callable[[], bool] = lambda: shutil.which("ufw") is not None,
    ufw_active: Callable[[], bool | None] = _ufw_state,
    program: Callable[[], str] = _python_program,
    interface_of: Callable[[str], str | None] = _interface_of,
) -> list[Check]:
    """Hints only: the rules cannot be read without admin rights, so this never fails."""
    if is_loopback(config.host):
        return [Check("firewall", "ok", f"{config.host} is loopback: no rule needed")]
    port, udp = config.port, config.udp_ports
    udp_text = f"UDP {udp[0]}-{udp[1]}" if udp else "UDP for Python (OS-chosen ports)"
    if platform == "nt":
        rule = "netsh advfirewall firewall add rule dir=in action=allow profile=private"
        checks = [
            Check(
                "firewall",
                "warn",
                f"Windows must let in TCP {port} (HTTPS) from other devices",
                f'in an admin shell: {rule} name="{OUR_RULE} TCP {port}" protocol=TCP '
                f"localport={port}",
            )
        ]
        if udp:
            udp_fix = (
                f'{rule} name="{OUR_RULE} UDP {udp[0]}-{udp[1]}" protocol=UDP '
                f"localport={udp[0]}-{udp[1]}"
            )
        else:
            udp_fix = f'{rule} name="{OUR_RULE} Python UDP" protocol=UDP program="{program()}"'
        checks.append(
            Check(
                "firewall",
                "warn",
                f"Windows must let in {udp_text} for the audio (TCP alone is not enough)",
                f"in an admin shell: {udp_fix}",
            )
        )
        checks.append(
            Check(
                "firewall",
                "warn",
                "these rules cover Private networks, and Windows often files a WireGuard "
                "tunnel as Public",
                "in an admin PowerShell: Set-NetConnectionProfile -InterfaceAlias "
                "<tunnel name> -NetworkCategory Private",
            )
        )
        return checks
    if not has_ufw():
        return [
            Check(
                "firewall",
                "ok",
                f"no ufw here; any other firewall must let in TCP {port} and {udp_text}",
            )
        ]
    if udp:
        commands = f"sudo ufw allow {port}/tcp && sudo ufw allow {udp[0]}:{udp[1]}/udp"
    else:
        # Without a fixed range, the media ports are unknown: allow the interface.
        iface = interface_of(config.host) or "<vpn or lan interface>"
        commands = f"sudo ufw allow {port}/tcp && sudo ufw allow in on {iface} proto udp"
    active = ufw_active()
    if active is False:
        return [Check("firewall", "ok", "ufw is installed but inactive")]
    state = "ufw is active" if active else "ufw is installed (run `sudo ufw status`)"
    return [
        Check(
            "firewall",
            "warn",
            f"{state}: it must let in TCP {port} and {udp_text}",
            f"unless done already: {commands}",
        )
    ]


async def check_asr_server(config: Config) -> list[Check]:
    """With --asr-url: the server answers, says what it runs, and transcribes."""
    try:
        key = asr_api_key(config)
    except ConfigError as exc:
        return [Check("asr server", "fail", str(exc))]
    client = RemoteASR(
        parse_asr_url(config.asr_url), model=config.asr_model, timeout_s=10.0, api_key=key
    )
    try:
        await client.start()
        problem = await client.check()
        if problem is not None:
            return [Check("asr server", "fail", problem)]
        started = time.monotonic()
        await client.transcribe(np.zeros(8000, dtype=np.float32), None)
        seconds = time.monotonic() - started
    except ASRError as exc:
        return [Check("asr server", "fail", f"{client.endpoint}: {exc}")]
    finally:
        await client.close()
    engine = client.engine
    return [
        Check(
            "asr server",
            "ok",
            f"{client.endpoint}: {engine.name} {engine.model} on {engine.device}, "
            f"a test transcription in {seconds:.1f} s",
        )
    ]


# --- running -----------------------------------------------------------------------------


def default_checks() -> list[CheckFn]:
    return [
        check_python,
        check_packages,
        check_torch,
        check_asr,
        check_vad,
        check_turns,
        check_tts,
        check_ollama,
        check_certificate,
        check_port,
        check_udp,
        check_turn_relay,
        check_firewall,
    ]


def run_doctor(
    config: Config,
    *,
    out: TextIO | None = None,
    checks: Sequence[CheckFn] | None = None,
) -> int:
    """Print one line per check as it finishes, then a summary; 0 unless a check failed."""
    out = out or sys.stdout
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for check in default_checks() if checks is None else checks:
        try:
            results: Sequence[Check] = check(config)
        except Exception as exc:  # a broken check must not hide the others
            name = getattr(check, "__name__", "check").removeprefix("check_")
            results = [Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}")]
        for result in results:
            counts[result.status] += 1
            print(result.line(), file=out, flush=True)
    verdict = "fix the failures above before serving" if counts["fail"] else "ready to serve"
    print(
        f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail: {verdict}",
        file=out,
        flush=True,
    )
    return 1 if counts["fail"] else 0


def doctor_command(argv: Sequence[str]) -> int:
    """``local-ai-gateway doctor [serve flags]``."""
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"local-ai-gateway: error: {exc}", file=sys.stderr)
        return 2
    return run_doctor(config)
