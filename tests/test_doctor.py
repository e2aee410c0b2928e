"""``local-ai-gateway doctor``: each check with what it is given injected, the real
certificate code in temporary folders, real sockets, and the Ollama-compatible server."""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import io
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from certs.authority import CA_KEY_NAME, SERVER_CERT_NAME, SERVER_KEY_NAME, ensure_certificates
from gateway.conversation.endofturn import TurnJudge
from gateway.errors import ModelLoadError
from gateway.ops import doctor
from gateway.ops.config import Config
from gateway.ops.doctor import (
    GPU_FIX,
    Check,
    TorchInfo,
    check_asr,
    check_certificate,
    check_firewall,
    check_ollama,
    check_packages,
    check_port,
    check_python,
    check_torch,
    check_tts,
    check_turns,
    check_udp,
    check_vad,
    doctor_command,
    run_doctor,
)
from gateway.ops.exposure import local_addresses, ollama_port
from gateway.testing.ollama_server import fake_ollama
from media import Float32Array
from media.asr.base import ASREngine, Transcription, transcribe_each
from media.smart_turn import find_turn_model
from tests.conftest import EngineCache

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BASE = Config()


def statuses(checks: Sequence[Check]) -> list[str]:
    return [c.status for c in checks]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def never_binds(code: int) -> doctor.Binder:
    def bind(host: str, port: int, kind: socket.SocketKind) -> None:
        raise OSError(code, "refused by the test")

    return bind


# --- python, packages, torch -------------------------------------------------------------


def test_python_version() -> None:
    assert statuses(check_python(BASE, version=(3, 11, 9))) == ["ok"]
    [old] = check_python(BASE, version=(3, 9, 18))
    assert old.status == "fail"
    assert "3.9.18 is too old" in old.detail


def test_packages_lists_versions() -> None:
    [ok] = check_packages(BASE, version=lambda name: "3.14.5")
    assert ok.status == "ok"
    assert ok.detail.startswith("aiortc 3.14.5, aioice 3.14.5, aiohttp 3.14.5")
    assert "pyjwt 3.14.5" in ok.detail


def test_packages_missing_fails_and_old_aiohttp_warns() -> None:
    def version(name: str) -> str:
        if name == "faster-whisper":
            raise importlib.metadata.PackageNotFoundError(name)
        return "3.14.2" if name == "aiohttp" else "1.0"

    checks = check_packages(BASE, version=version)
    assert statuses(checks) == ["ok", "fail", "warn"]
    assert "faster-whisper is not installed" in checks[1].detail
    assert "pip install faster-whisper" in checks[1].fix
    assert "aiohttp 3.14.2 is older than 3.14.3" in checks[2].detail


def test_packages_real() -> None:
    assert statuses(check_packages(BASE))[0] == "ok"


CPU_TORCH = TorchInfo("2.13.0+cpu", None, False, None)
CUDA_TORCH = TorchInfo("2.13.0+cu128", "12.8", True, "NVIDIA H100 80GB HBM3")
CUDA_NO_GPU = TorchInfo("2.13.0+cu128", "12.8", False, None)


def test_torch_cuda_requested_without_cuda_fails_with_the_fix() -> None:
    config = replace(BASE, asr_device="cuda")
    [check] = check_torch(config, probe=lambda: CPU_TORCH, nvidia_driver=lambda: False)
    assert check.status == "fail"
    assert check.detail == "--asr-device cuda, but torch 2.13.0+cpu (CPU build) cannot use a GPU"
    assert check.fix == "install the CUDA build of torch: see README GPUs" == GPU_FIX


def test_torch_cuda_build_without_gpu_points_at_the_driver() -> None:
    config = replace(BASE, asr_device="cuda")
    [check] = check_torch(config, probe=lambda: CUDA_NO_GPU)
    assert check.status == "fail"
    assert "nvidia-smi" in check.fix


def test_torch_with_gpu_names_it() -> None:
    [check] = check_torch(BASE, probe=lambda: CUDA_TORCH)
    assert check == Check(
        "torch", "ok", "torch 2.13.0+cu128 (CUDA 12.8 build), GPU NVIDIA H100 80GB HBM3"
    )


def test_torch_cpu_build_on_a_machine_with_a_gpu_warns() -> None:
    [plain] = check_torch(BASE, probe=lambda: CPU_TORCH, nvidia_driver=lambda: False)
    assert plain.status == "ok"
    [gpu_box] = check_torch(BASE, probe=lambda: CPU_TORCH, nvidia_driver=lambda: True)
    assert gpu_box.status == "warn"
    assert gpu_box.fix == GPU_FIX
    # Asking for the CPU is a choice, not a mistake.
    cpu = replace(BASE, asr_device="cpu")
    assert statuses(check_torch(cpu, probe=lambda: CPU_TORCH, nvidia_driver=lambda: True)) == ["ok"]


def test_torch_missing_fails() -> None:
    [check] = check_torch(BASE, probe=lambda: None)
    assert check.status == "fail"
    assert "not installed" in check.detail


# --- models ------------------------------------------------------------------------------


class FakeEngine:
    name = "faster-whisper"
    model = "base.en"
    device = "cpu"
    languages = frozenset({"en"})

    def transcribe(self, audio: Float32Array, language: str | None) -> Transcription:
        return Transcription(())

    def transcribe_batch(
        self, audios: Sequence[Float32Array], language: str | None
    ) -> list[Transcription]:
        return transcribe_each(self, audios, language)


def test_asr_loads_what_the_config_names() -> None:
    calls: list[tuple[str, str, str]] = []

    def loader(engine: str, model: str, device: str) -> ASREngine:
        calls.append((engine, model, device))
        return FakeEngine()

    config = replace(BASE, asr_engine="faster-whisper", asr_model="base.en", asr_device="cpu")
    [check] = check_asr(config, loader=loader)
    assert calls == [("faster-whisper", "base.en", "cpu")]
    assert check.status == "ok"
    assert check.detail.startswith("faster-whisper base.en loaded on cpu in ")


def test_asr_load_error_fails_with_its_message() -> None:
    def loader(engine: str, model: str, device: str) -> ASREngine:
        raise ModelLoadError(f"cannot load {engine} model {model!r}: no network")

    [check] = check_asr(replace(BASE, asr_model="large-v3"), loader=loader)
    assert check == Check(
        "asr model", "fail", "cannot load openai-whisper model 'large-v3': no network"
    )


def test_asr_load_is_bounded() -> None:
    release = threading.Event()

    def loader(engine: str, model: str, device: str) -> ASREngine:
        release.wait(5)
        return FakeEngine()

    try:
        [check] = check_asr(BASE, loader=loader, timeout_s=0.05)
    finally:
        release.set()
    assert check.status == "fail"
    assert "did not load within 0 s" in check.detail


def test_tts_speaks_with_the_offline_voice(engines: EngineCache) -> None:
    [check] = check_tts(replace(BASE, tts_engine="piper"), loader=lambda c: engines.piper())
    assert check.status == "ok"
    assert check.detail.startswith("piper voice en_US-joe-medium speaks (")


def test_tts_off_and_missing_piper() -> None:
    assert check_tts(replace(BASE, tts_engine="none")) == [
        Check("tts", "ok", "spoken replies off (--tts-engine none)")
    ]


def test_tts_voice_that_does_not_load_names_the_flag(tmp_path: Path) -> None:
    config = replace(BASE, tts_engine="piper", tts_voice=str(tmp_path / "nobody.onnx"))
    [check] = check_tts(config)
    assert check.status == "fail"
    assert "--tts-voice" in check.detail


def test_an_unreachable_speech_server_fails_the_tts_check() -> None:
    config = replace(BASE, tts_engine="openai", tts_url="http://127.0.0.1:9")
    [check] = check_tts(config)
    assert check.status == "fail"
    assert check.name == "tts"


def test_vad_model() -> None:
    assert statuses(check_vad(BASE)) == ["ok"]

    def missing() -> Path:
        raise ModelLoadError("Silero VAD model missing at /x: reinstall silero-vad")

    [check] = check_vad(BASE, locate=missing)
    assert check.status == "fail"
    assert "reinstall silero-vad" in check.detail


# --- Ollama ------------------------------------------------------------------------------


def no_addresses() -> list[str]:
    return []


async def test_ollama_down_fails_with_ollama_serve() -> None:
    config = replace(BASE, ollama_host=f"http://127.0.0.1:{free_port()}")
    [check] = await asyncio.to_thread(check_ollama, config, addresses=no_addresses)
    assert check.status == "fail"
    assert check.detail == f"cannot reach Ollama at {config.ollama_host}"
    assert "`ollama serve`" in check.fix


async def test_ollama_model_missing_fails_with_ollama_pull() -> None:
    async with fake_ollama() as (_state, url):
        config = replace(BASE, ollama_host=url, ollama_model="qwen3:8b")
        [check] = await asyncio.to_thread(check_ollama, config, addresses=no_addresses)
    assert check.status == "fail"
    assert "does not have the model 'qwen3:8b'" in check.detail
    assert check.fix.startswith("`ollama pull qwen3:8b`")


async def test_another_service_on_ollamas_port_is_named_as_such(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>a web app</html>")

    app = web.Application()
    app.router.add_get("/api/tags", page)
    server = await aiohttp_server(app)
    config = replace(BASE, ollama_host=f"http://127.0.0.1:{server.port}")
    [check] = await asyncio.to_thread(check_ollama, config, addresses=no_addresses)
    assert check.status == "fail"
    assert check.detail == f"{config.ollama_host} answers, but not as Ollama does"
    assert "--ollama-host" in check.fix


async def test_ollama_model_present() -> None:
    async with fake_ollama() as (_state, url):
        config = replace(BASE, ollama_host=url)  # llama3.2, which the server has as :latest
        [check] = await asyncio.to_thread(check_ollama, config, addresses=no_addresses)
    assert check == Check("ollama", "ok", f"Ollama at {url} has llama3.2")


async def test_ollama_answering_beyond_loopback_warns() -> None:
    # Stand-in for "this machine's other address": a listening socket on 127.0.0.2 at the
    # same port, never accepted (the kernel completes the probe's handshake), so the probe
    # leaves no half-accepted connection in the fake server at shutdown.
    async with fake_ollama() as (_state, url):
        port = ollama_port(url)
        with socket.socket() as other:
            other.bind(("127.0.0.2", port))
            other.listen()
            config = replace(BASE, ollama_host=url)
            checks = await asyncio.to_thread(
                check_ollama, config, addresses=lambda: ["127.0.0.2"], probe_timeout_s=2.0
            )
    assert statuses(checks) == ["ok", "warn"]
    assert checks[1].detail == f"Ollama also answers on 127.0.0.2:{port}"
    assert "set OLLAMA_HOST=127.0.0.1" in checks[1].fix


async def test_ollama_on_loopback_only_adds_nothing() -> None:
    async with fake_ollama() as (_state, url):
        config = replace(BASE, ollama_host=url)
        closed = f"127.0.0.{2 + free_port() % 200}"  # nothing listens on that address
        checks = await asyncio.to_thread(check_ollama, config, addresses=lambda: [closed])
    assert statuses(checks) == ["ok"]


def test_local_addresses_exclude_loopback() -> None:
    assert not {"127.0.0.1", "::1"} & set(local_addresses())


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://127.0.0.1:11434", 11434),
        ("127.0.0.1", 11434),
        ("localhost:9000", 9000),
        ("http://[::1]:8080", 8080),
        ("http://127.0.0.1", 80),
        ("https://127.0.0.1", 443),
    ],
)
def test_ollama_port_as_the_client_reads_it(url: str, port: int) -> None:
    assert ollama_port(url) == port


# --- certificate -------------------------------------------------------------------------


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    ensure_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"], now=NOW)
    return tmp_path / "certs"


def test_certificate_ok_names_what_it_covers(cert_dir: Path) -> None:
    config = replace(BASE, cert_dir=cert_dir)
    [check] = check_certificate(config, now=NOW + timedelta(days=1))
    assert check.status == "ok"
    assert check.detail.startswith(f"{cert_dir / SERVER_CERT_NAME} for localhost, 127.0.0.1;")
    assert "valid until 2027-" in check.detail


def test_certificate_for_another_host_warns_naming_it(cert_dir: Path) -> None:
    config = replace(BASE, cert_dir=cert_dir, host="10.8.0.5")
    [check] = check_certificate(config, now=NOW + timedelta(days=1))
    assert check.status == "warn"
    assert "does not cover 10.8.0.5" in check.detail
    assert "delete it and its key" in check.fix


def test_certificate_expiring_soon_warns(cert_dir: Path) -> None:
    config = replace(BASE, cert_dir=cert_dir)
    [check] = check_certificate(config, now=NOW + timedelta(days=800))
    assert check.status == "warn"
    assert "expires on" in check.detail
    [gone] = check_certificate(config, now=NOW + timedelta(days=900))
    assert "expired on" in gone.detail


def test_certificate_missing_warns_it_will_be_made(tmp_path: Path) -> None:
    [check] = check_certificate(replace(BASE, cert_dir=tmp_path), now=NOW)
    assert check.status == "warn"
    assert "will be made on first serve" in check.fix
    assert "certs --host 127.0.0.1 " in check.fix
    [wildcard] = check_certificate(replace(BASE, cert_dir=tmp_path, host="0.0.0.0"), now=NOW)
    assert "certs --host <your LAN or VPN address> " in wildcard.fix


def test_certificate_corrupt_fails(cert_dir: Path) -> None:
    (cert_dir / SERVER_CERT_NAME).write_text("not a certificate\n")
    [check] = check_certificate(replace(BASE, cert_dir=cert_dir), now=NOW)
    assert check.status == "fail"
    assert "is not a PEM certificate" in check.detail


def test_certificate_key_missing_or_wrong_fails(cert_dir: Path, tmp_path: Path) -> None:
    config = replace(BASE, cert_dir=cert_dir)
    other = ensure_certificates(tmp_path / "other", ["localhost"], now=NOW)
    key = cert_dir / SERVER_KEY_NAME
    key.chmod(0o600)
    key.write_bytes(other.server_key.read_bytes())
    [wrong] = check_certificate(config, now=NOW)
    assert wrong.status == "fail"
    key.unlink()
    [missing] = check_certificate(config, now=NOW)
    assert missing.status == "fail"
    assert "its key" in missing.detail


def test_certificate_cannot_be_made_without_the_ca_key(cert_dir: Path) -> None:
    (cert_dir / SERVER_CERT_NAME).unlink()
    (cert_dir / CA_KEY_NAME).unlink()
    [check] = check_certificate(replace(BASE, cert_dir=cert_dir), now=NOW)
    assert check.status == "fail"
    assert "none can be made" in check.detail


def test_certificate_without_tls() -> None:
    assert check_certificate(replace(BASE, no_tls=True)) == [
        Check("certificate", "ok", "TLS off (loopback only)")
    ]


# --- port and UDP ------------------------------------------------------------------------


def test_port_in_use_fails() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        [check] = check_port(replace(BASE, port=port))
    assert check.status == "fail"
    assert check.detail == f"another program (or a running gateway) uses port {port}"
    assert "--port" in check.fix


def test_port_free() -> None:
    port = free_port()
    assert check_port(replace(BASE, port=port)) == [
        Check("port", "ok", f"TCP 127.0.0.1:{port} is free")
    ]


def test_port_on_an_address_not_here_or_reserved() -> None:
    config = replace(BASE, host="10.8.0.5")
    [absent] = check_port(config, bind=never_binds(errno.EADDRNOTAVAIL))
    assert absent.detail == "10.8.0.5 is not an address of this machine"
    [reserved] = check_port(config, bind=never_binds(errno.EACCES), platform="nt")
    assert reserved.status == "fail"
    assert "excludedportrange protocol=tcp" in reserved.fix


@pytest.fixture
def udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def test_udp_range_free(udp_port: int) -> None:
    config = replace(
        BASE, udp_ports=(udp_port, udp_port), ice_addresses=("127.0.0.1",), max_sessions=1
    )
    assert check_udp(config) == [
        Check("udp ports", "ok", f"UDP {udp_port}-{udp_port} free on 127.0.0.1 (tried {udp_port})")
    ]


def test_udp_port_in_use_warns(udp_port: int) -> None:
    config = replace(BASE, udp_ports=(udp_port, udp_port), max_sessions=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", udp_port))
        [check] = check_udp(config)
    assert check.status == "warn"
    assert check.detail == f"UDP 127.0.0.1:{udp_port} already in use"


def test_udp_samples_the_range_on_each_address() -> None:
    calls: list[tuple[str, int]] = []

    def bind(host: str, port: int, kind: socket.SocketKind) -> None:
        assert kind == socket.SOCK_DGRAM
        calls.append((host, port))

    config = replace(BASE, udp_ports=(50000, 50100), ice_addresses=("10.8.0.1", "wg0"))
    checks = check_udp(config, bind=bind, resolve=lambda v: ["10.8.0.1"] if v == "wg0" else [v])
    assert statuses(checks) == ["ok"]
    assert calls == [("10.8.0.1", p) for p in (50000, 50001, 50050, 50099, 50100)]


def test_udp_permission_fails() -> None:
    config = replace(BASE, udp_ports=(50000, 50100))
    [check] = check_udp(config, bind=never_binds(errno.EACCES))
    assert check.status == "fail"
    assert check.detail == "not allowed to bind UDP 127.0.0.1:50000"


def test_udp_unknown_interface_fails() -> None:
    [check] = check_udp(replace(BASE, ice_addresses=("nosuch-wg9",)))
    assert check.status == "fail"
    assert "--ice-address nosuch-wg9" in check.detail


def test_udp_range_too_small_for_the_sessions() -> None:
    config = replace(BASE, udp_ports=(50000, 50003), max_sessions=8)
    [check] = check_udp(config, bind=lambda host, port, kind: None)
    assert check.status == "warn"
    assert check.detail == "50000-50003 holds 4 ports; 8 sessions on 1 address(es) need 8"


def test_udp_without_a_range_checks_the_address() -> None:
    calls: list[int] = []
    checks = check_udp(BASE, bind=lambda host, port, kind: calls.append(port))
    assert calls == [0]
    assert statuses(checks) == ["ok"]
    assert "OS-chosen" in checks[0].detail


# --- firewall ----------------------------------------------------------------------------

LAN = replace(BASE, host="10.8.0.1", auth="api-key", api_keys_file=Path("keys"))


def test_firewall_loopback_needs_nothing() -> None:
    assert statuses(check_firewall(BASE, platform="nt")) == ["ok"]


def test_firewall_windows_rules_with_a_range() -> None:
    checks = check_firewall(replace(LAN, udp_ports=(50000, 50100)), platform="nt")
    assert statuses(checks) == ["warn", "warn", "warn"]
    rule = "netsh advfirewall firewall add rule dir=in action=allow profile=private"
    assert checks[0].fix == (
        f'in an admin shell: {rule} name="Local AI Gateway TCP 8001" protocol=TCP localport=8001'
    )
    assert checks[1].fix == (
        f'in an admin shell: {rule} name="Local AI Gateway UDP 50000-50100" protocol=UDP '
        "localport=50000-50100"
    )
    assert "NetworkCategory Private" in checks[2].fix


def test_firewall_windows_program_rule_without_a_range() -> None:
    program = r"C:\Python311\python.exe"
    checks = check_firewall(LAN, platform="nt", program=lambda: program)
    assert f'protocol=UDP program="{program}"' in checks[1].fix


def test_firewall_ufw_hints() -> None:
    config = replace(LAN, udp_ports=(50000, 50100))
    [active] = check_firewall(
        config, platform="posix", has_ufw=lambda: True, ufw_active=lambda: True
    )
    assert active.status == "warn"
    assert (
        active.fix
        == "unless done already: sudo ufw allow 8001/tcp && sudo ufw allow 50000:50100/udp"
    )
    [by_interface] = check_firewall(
        LAN,
        platform="posix",
        has_ufw=lambda: True,
        ufw_active=lambda: None,
        interface_of=lambda address: "wg0",
    )
    assert by_interface.fix.endswith("sudo ufw allow in on wg0 proto udp")
    [inactive] = check_firewall(
        config, platform="posix", has_ufw=lambda: True, ufw_active=lambda: False
    )
    assert inactive.status == "ok"
    [no_ufw] = check_firewall(config, platform="posix", has_ufw=lambda: False)
    assert no_ufw.status == "ok"


# --- run_doctor and the command ----------------------------------------------------------


def fixed(*checks: Check) -> doctor.CheckFn:
    return lambda config: checks


def test_run_doctor_output_and_exit_status() -> None:
    out = io.StringIO()
    code = run_doctor(
        BASE,
        out=out,
        checks=[
            fixed(Check("python", "ok", "3.11.9", "never shown")),
            fixed(Check("ollama", "fail", "cannot reach Ollama", "start it with `ollama serve`")),
            fixed(Check("certificate", "warn", "no certificate yet", "made on first serve")),
        ],
    )
    assert code == 1
    assert out.getvalue() == (
        "ok    python: 3.11.9\n"
        "fail  ollama: cannot reach Ollama — start it with `ollama serve`\n"
        "warn  certificate: no certificate yet — made on first serve\n"
        "1 ok, 1 warn, 1 fail: fix the failures above before serving\n"
    )


def test_run_doctor_warnings_alone_pass() -> None:
    out = io.StringIO()
    checks = [fixed(Check("a", "ok", "fine")), fixed(Check("b", "warn", "hm", "do x"))]
    assert run_doctor(BASE, out=out, checks=checks) == 0
    assert out.getvalue().endswith("1 ok, 1 warn, 0 fail: ready to serve\n")


def test_run_doctor_survives_a_broken_check() -> None:
    def check_broken(config: Config) -> list[Check]:
        raise RuntimeError("boom")

    out = io.StringIO()
    assert run_doctor(BASE, out=out, checks=[check_broken, fixed(Check("a", "ok", "x"))]) == 1
    assert out.getvalue().splitlines()[:2] == [
        "fail  broken: the check itself failed: RuntimeError: boom",
        "ok    a: x",
    ]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_doctor_command_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_command(["--port", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == "local-ai-gateway: error: --port: expected an integer, got 'nope' (from command line)\n"
    )


@pytest.mark.usefixtures("clean_env")
def test_doctor_command_checks_the_serve_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "default_checks", lambda: [check_port])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert doctor_command(["--port", str(port), "--no-tls"]) == 1
    assert f"uses port {port}" in capsys.readouterr().out


# --- turn detection ---------------------------------------------------------------------


def test_turn_detection_says_whether_the_model_is_in_use(tmp_path: Path) -> None:
    [fixed] = check_turns(replace(BASE, turn_detection="fixed", vad_silence_ms=700))
    assert (fixed.status, fixed.detail) == ("ok", "a fixed 700 ms silence ends each turn")
    [text] = check_turns(replace(BASE, turn_detection="text"))
    assert text.status == "ok"
    assert "no end-of-turn model" in text.detail

    def no_model(config: Config) -> TurnJudge:
        return TurnJudge("auto")  # what auto is when no model is found

    [missing] = check_turns(BASE, load=no_model)
    assert missing.status == "warn"
    assert "pipecat-ai" in missing.fix
    corrupt = tmp_path / "st.onnx"
    corrupt.write_bytes(b"garbage")
    [bad] = check_turns(replace(BASE, turn_model=corrupt))
    assert bad.status == "fail"
    assert "--turn-model" in bad.detail


@pytest.mark.skipif(find_turn_model(None) is None, reason="pipecat-ai is not installed")
def test_turn_detection_with_the_installed_model() -> None:
    [check] = check_turns(BASE)
    assert check.status == "ok"
    assert "model in use" in check.detail
