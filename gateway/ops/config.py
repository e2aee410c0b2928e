"""Configuration: command-line flags, ``GATEWAY_*`` environment variables and a TOML file.

Every option exists in all three forms: ``--asr-model`` is ``GATEWAY_ASR_MODEL`` and the TOML
key ``asr_model``. A flag beats the environment, which beats the file, which beats the
default. Parsing is pure (argv, env and file text in, :class:`Config` out) so that tests
are exact; a bad value raises :class:`ConfigError` naming the flag.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import SplitResult, urlsplit

from gateway.conversation.endofturn import TURN_DETECTIONS, TurnDetection
from gateway.errors import ConfigError
from gateway.ops.logs import LogFormat
from media.asr.remote import parse_asr_url
from signalling.proxies import ProxyNetwork, parse_trusted_proxy
from signalling.registry import parse_replica_id
from signalling.turn import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S, parse_turn_url

AsrEngineName = Literal["openai-whisper", "faster-whisper"]
AsrDevice = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]
AuthMode = Literal["none", "api-key", "jwt"]
AUTH_MODES: tuple[AuthMode, ...] = ("none", "api-key", "jwt")

ASR_ENGINES: tuple[AsrEngineName, ...] = ("openai-whisper", "faster-whisper")
ASR_DEVICES: tuple[AsrDevice, ...] = ("auto", "cpu", "cuda")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
TtsEngineName = Literal["auto", "piper", "openai", "none"]
TTS_ENGINES: tuple[TtsEngineName, ...] = ("auto", "piper", "openai", "none")
DEFAULT_TTS_URL = "http://127.0.0.1:8000"  # Speaches' default; Kokoro-FastAPI uses 8880


DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
MAX_WORKERS = 64
DEFAULT_PARTIAL_INTERVAL_MS = 800
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. The user speaks to you and hears or reads your "
    "answer at once, so answer briefly, in plain spoken sentences: no markdown, no lists, "
    "no code blocks, no emoji. If you are not sure what the user said, ask."
)


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8001
    cert_dir: Path = Path("certs")
    no_tls: bool = False
    asr_engine: AsrEngineName = "openai-whisper"
    asr_model: str = "tiny.en"
    asr_device: AsrDevice = "auto"
    # A shared ASR server (local-ai-gateway asr-server, vLLM, Speaches) instead of a model
    # in this process: unix:/path.sock or http(s)://host:port[/v1]. Loopback or a socket
    # unless allow_remote_asr: the audio would leave the machine.
    asr_url: str = ""
    allow_remote_asr: bool = False
    asr_api_key_file: Path | None = None  # the key --asr-url's server wants (vLLM --api-key)
    # Media workers: None ("auto") is one per core. With more than one, this process is the
    # front (HTTP, auth, limits) and each worker, a process of its own, serves its sessions
    # on a Unix socket; the ASR server runs once for all. The front sets the two below.
    workers: int | None = None
    worker_socket: Path | None = None  # set in a worker: serve here, not on host:port
    worker_id: str = ""  # set in a worker: its name, in every session id it makes
    # The longest silence a turn waits for; turn detection ends most turns much sooner.
    vad_silence_ms: int = 1000
    # End of turn: "auto" is the audio model when one is found, else the text policy.
    turn_detection: TurnDetection = "auto"
    turn_min_silence_ms: int = 200  # the pause at which the turn's end is judged
    turn_likely_silence_ms: int = 500  # a probable end waits this much silence
    turn_model: Path | None = None  # Smart Turn v3 ONNX; default: an installed pipecat-ai's
    # Live captions this often while speaking (0: off). None ("auto"): on a GPU only, where
    # the recogniser has time to spare; on a CPU each caption holds it ~0.5 s (tiny.en,
    # 2 cores), and a turn that ends meanwhile waits for it.
    partial_interval_ms: int | None = None
    max_sessions: int = 8
    ice_servers: tuple[str, ...] = field(default_factory=tuple)
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    ollama_host: str = DEFAULT_OLLAMA_HOST
    ollama_model: str = "llama3.2"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    history_turns: int = 10
    ollama_temperature: float | None = None
    ollama_num_ctx: int | None = None
    ollama_keep_alive: str = "30m"
    llm_first_token_timeout: float = 30.0
    llm_timeout: float = 120.0
    allow_remote_ollama: bool = False
    auth: AuthMode = "none"
    api_keys_file: Path | None = None
    jwt_secret_file: Path | None = None
    jwt_public_key: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allow_insecure: bool = False
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    ice_addresses: tuple[str, ...] = field(default_factory=tuple)
    udp_ports: tuple[int, int] | None = None
    # TURN for clients off the VPN (coturn's use-auth-secret): GET /config hands each
    # authenticated client credentials that last turn_ttl_s, and the gateway's own peer
    # connections relay through the same server. The secret is read at start-up.
    turn_urls: tuple[str, ...] = field(default_factory=tuple)
    turn_secret_file: Path | None = None
    turn_ttl_s: int = DEFAULT_TTL_S
    offer_rate: int = 20
    sessions_per_client: int = 4
    max_session_s: int = 4 * 3600
    idle_timeout_s: int = 600
    # A reconnecting client continues its conversation if its old session ended this long
    # ago at most (histories live in memory: a restart ends them).
    resume_window_s: int = 300
    # On SIGTERM, how long running replies may finish before every session is ended.
    drain_timeout_s: int = 20
    # Admission from measured capacity (gateway.ops.capacity): a new session is refused
    # (503) while one more would push the CPU or the recogniser past these shares.
    admission: Literal["measured", "off"] = "measured"
    cpu_limit: float = 0.7
    asr_limit: float = 0.5  # a queue's waits grow steeply as it fills: see bench capacity
    # Spoken replies: "auto" is piper when it is installed (the `tts` extra), else none.
    tts_engine: TtsEngineName = "auto"
    tts_voice: str | None = None  # piper: a voice name or a .onnx path; openai: a voice
    tts_url: str = DEFAULT_TTS_URL
    tts_model: str = "tts-1"
    tts_api_key_file: Path | None = None  # the key --tts-url's server wants
    allow_remote_tts: bool = False
    # While the gateway speaks, this much speech (not echo, not a cough) interrupts it.
    barge_in_min_ms: int = 300
    # One of several replicas behind a load balancer: its session ids start "<replica_id>.",
    # which the balancer routes /sessions/<id> by. Empty: ids name no replica.
    replica_id: str = ""
    # Reverse proxies whose X-Forwarded-For names the client (limits, logs); none: the
    # connection's own address is the client.
    trusted_proxies: tuple[ProxyNetwork, ...] = field(default_factory=tuple)

    @property
    def tls(self) -> bool:
        return not self.no_tls

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"


# --- value parsers: each takes the raw text and raises ValueError with a short reason ---


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _host(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected an IP address or host name, got {text!r}")
    return value


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    return parse


def _path(text: str) -> Path:
    return Path(_nonempty(text))


_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name or IPv4 address as a browser serialises it (lower case; IDNs as xn--).
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")


def parse_origin(text: str) -> str:
    """An ``http(s)://host[:port]`` origin as browsers serialise it (RFC 6454): lower case,
    an IPv6 address compressed, no default port. This one parser serves ``--cors-origin``
    and the CORS checks, so that what is configured and what a browser sends compare equal.
    A ValueError says what is wrong, with the text quoted (so on one line)."""
    shape = "an origin is scheme://host[:port]"
    scheme, sep, authority = text.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text!r} is not an origin like https://app.example:3000")
    if "@" in authority:
        raise ValueError(f"{text!r} has user info (user@); {shape}")
    if any(c in authority for c in "/?#"):
        raise ValueError(f"{text!r} has a path, query or fragment; {shape}")
    authority = authority.lower()
    if authority.startswith("["):  # an IPv6 literal; no zone (%eth0), as in browsers
        address, bracket, port = authority[1:].partition("]")
        try:
            host = f"[{ipaddress.IPv6Address(address)}]" if bracket and "%" not in address else ""
        except ValueError:
            host = ""
        if port and not port.startswith(":"):
            raise ValueError(f"{text!r} has no valid port")
    else:
        name, colon, digits = authority.partition(":")
        if not name:
            raise ValueError(f"{text!r} has no host")
        host = name if _HOST_NAME.fullmatch(name) else ""
        port = colon + digits
    if not host:
        raise ValueError(f"{text!r} has no valid host")
    if not port:
        return f"{scheme}://{host}"
    digits = port[1:]
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits.
    if not (digits.isascii() and digits.isdigit() and 0 < int(digits) < 65536):
        raise ValueError(f"{text!r} has no valid port")
    if int(digits) == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(digits)}"


def _origin(text: str) -> str:
    # A trailing slash is forgiven here, where people paste URLs; a browser never sends one.
    value = text.strip()
    return parse_origin(value[:-1] if value.endswith("/") else value)


def _auto_or(parse: Callable[[str], int]) -> Callable[[str], int | None]:
    def parse_auto(text: str) -> int | None:
        return None if text.strip().lower() == "auto" else parse(text)

    return parse_auto


def partial_interval_ms(config: Config, asr_device: str) -> int:
    """Live captions' interval (0: none); ``auto`` decides by the recogniser's device."""
    if config.partial_interval_ms is not None:
        return config.partial_interval_ms
    return DEFAULT_PARTIAL_INTERVAL_MS if asr_device == "cuda" else 0


def _port_range(text: str) -> tuple[int, int]:
    lo_text, sep, hi_text = text.strip().partition("-")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise ValueError(f"expected LO-HI, e.g. 50000-50100, got {text!r}") from None
    if not sep or not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"expected 1024 <= LO <= HI <= 65535, got {text!r}")
    return (lo, hi)


def _asr_url(text: str) -> str:
    parse_asr_url(text)  # raises ValueError with the reason
    return text.strip()


def _ice_server(text: str) -> str:
    value = text.strip()
    scheme, _, rest = value.partition(":")
    if scheme not in ("stun", "turn", "turns") or not rest or any(c.isspace() for c in rest):
        raise ValueError(f"expected a stun:, turn: or turns: URL, got {text!r}")
    return value


@dataclass(frozen=True)
class _Option:
    name: str  # the Config field; the flag is --name-with-dashes
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    is_flag: bool = False  # a switch that takes no value on the command line
    singular: str = ""  # the flag of a repeatable option, given once per value

    @property
    def flag(self) -> str:
        return self.singular or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "GATEWAY_" + self.name.upper()


def _options() -> tuple[_Option, ...]:
    return (
        _Option("host", _host, "address to listen on (default 127.0.0.1)"),
        _Option("port", _int_range(1, 65535), "TCP port for HTTPS (default 8001)"),
        _Option("cert_dir", lambda t: Path(_nonempty(t)), "certificate folder (default ./certs)"),
        _Option("no_tls", _bool, "serve plain HTTP (loopback only)", is_flag=True),
        _Option("asr_engine", _choice(ASR_ENGINES), "openai-whisper (default) or faster-whisper"),
        _Option("asr_model", _nonempty, "Whisper model name or path (default tiny.en)"),
        _Option("asr_device", _choice(ASR_DEVICES), "auto (default), cpu or cuda"),
        _Option(
            "asr_url",
            _asr_url,
            "use this ASR server (unix:/path.sock or http://host:port) instead of a model here",
        ),
        _Option("allow_remote_asr", _bool, "allow a non-loopback --asr-url", is_flag=True),
        _Option("asr_api_key_file", _path, "file with the API key for the --asr-url server"),
        _Option(
            "workers",
            _auto_or(_int_range(1, MAX_WORKERS)),
            "media worker processes (default auto: one per core; 1: all in this process)",
        ),
        _Option("worker_socket", _path, "internal: set by the front for each worker"),
        _Option("worker_id", parse_replica_id, "internal: set by the front for each worker"),
        _Option(
            "vad_silence_ms",
            _int_range(100, 5000),
            "the longest silence a turn waits for, ms (default 1000)",
        ),
        _Option(
            "turn_detection",
            _choice(TURN_DETECTIONS),
            "end of turn: auto (default: model if found, else text), model, text, fixed",
        ),
        _Option(
            "turn_min_silence_ms",
            _int_range(100, 2000),
            "pause at which the end of turn is judged, ms (default 200)",
        ),
        _Option(
            "turn_likely_silence_ms",
            _int_range(100, 5000),
            "silence after a probable end of turn, ms (default 500)",
        ),
        _Option("turn_model", _path, "Smart Turn v3 .onnx (default: from an installed pipecat-ai)"),
        _Option(
            "partial_interval_ms",
            _auto_or(_int_range(0, 10_000)),
            "live captions every ms of speech; 0 off (default auto: 800 on a GPU, off on a CPU)",
        ),
        _Option("max_sessions", _int_range(1, 1000), "concurrent sessions (default 8)"),
        _Option(
            "ice_servers",
            _ice_server,
            "STUN/TURN URL for ICE, repeatable (default: none, for LAN/VPN)",
            repeatable=True,
            singular="--ice-server",
        ),
        _Option("log_level", _choice(LOG_LEVELS), "debug, info (default), warning or error"),
        _Option("log_format", _choice(("text", "json")), "text (default) or json, one per line"),
        _Option(
            "ollama_host", _service_url, "Ollama URL (default $OLLAMA_HOST or 127.0.0.1:11434)"
        ),
        _Option("ollama_model", _nonempty, "Ollama model (default llama3.2)"),
        _Option("system_prompt", _nonempty, "system prompt (default: short spoken answers)"),
        _Option("system_prompt_file", lambda t: Path(_nonempty(t)), "read the system prompt"),
        _Option("history_turns", _int_range(0, 200), "exchanges kept per session (default 10)"),
        _Option("ollama_temperature", _float_range(0.0, 2.0), "sampling temperature"),
        _Option("ollama_num_ctx", _int_range(256, 1_048_576), "context window in tokens"),
        _Option("ollama_keep_alive", _nonempty, "keep the model loaded this long (default 30m)"),
        _Option(
            "llm_first_token_timeout",
            _float_range(1.0, 600.0),
            "seconds to wait for the first word of an answer (default 30)",
        ),
        _Option(
            "llm_timeout", _float_range(1.0, 3600.0), "seconds for a whole answer (default 120)"
        ),
        _Option("allow_remote_ollama", _bool, "allow a non-loopback --ollama-host", is_flag=True),
        _Option("auth", _choice(AUTH_MODES), "none (default), api-key or jwt"),
        _Option("api_keys_file", _path, "file with one API key per line (--auth api-key)"),
        _Option("jwt_secret_file", _path, "HS256 secret for --auth jwt"),
        _Option("jwt_public_key", _path, "PEM public key for RS256/ES256 tokens (--auth jwt)"),
        _Option("jwt_audience", _nonempty, "required JWT aud claim"),
        _Option("jwt_issuer", _nonempty, "required JWT iss claim"),
        _Option(
            "allow_insecure",
            _bool,
            "allow --auth none on a non-loopback address",
            is_flag=True,
        ),
        _Option(
            "cors_origins",
            _origin,
            "allow this browser origin (e.g. https://app.example:3000), repeatable",
            repeatable=True,
            singular="--cors-origin",
        ),
        _Option(
            "ice_addresses",
            _host,
            "only this address or interface for WebRTC media, repeatable",
            repeatable=True,
            singular="--ice-address",
        ),
        _Option("udp_ports", _port_range, "UDP port range for WebRTC media, LO-HI"),
        _Option(
            "turn_urls",
            parse_turn_url,
            "TURN relay for clients off the VPN and the gateway (turn: or turns:), repeatable",
            repeatable=True,
            singular="--turn-url",
        ),
        _Option("turn_secret_file", _path, "coturn's static-auth-secret (use-auth-secret)"),
        _Option(
            "turn_ttl_s",
            _int_range(MIN_TTL_S, MAX_TTL_S),
            "how long a TURN credential from /config lets a client connect, s (3600)",
        ),
        _Option("offer_rate", _int_range(1, 10_000), "POST /offer per minute per address (20)"),
        _Option("sessions_per_client", _int_range(1, 1000), "sessions per client address (4)"),
        _Option("max_session_s", _int_range(10, 7 * 86_400), "longest session, s (4 h)"),
        _Option("idle_timeout_s", _int_range(10, 86_400), "end a silent session after, s (600)"),
        _Option(
            "resume_window_s",
            _int_range(0, 86_400),
            "a reconnect continues the conversation within, s (300; 0: never)",
        ),
        _Option(
            "drain_timeout_s", _int_range(0, 3600), "on SIGTERM, replies may finish for, s (20)"
        ),
        _Option(
            "admission",
            _choice(("measured", "off")),
            "measured (default): refuse a session the CPU or ASR has no room for; off",
        ),
        _Option("cpu_limit", _float_range(0.1, 1.0), "share of the cores sessions may use (0.7)"),
        _Option("asr_limit", _float_range(0.1, 1.0), "share of the recogniser's time (0.5)"),
        _Option(
            "tts_engine",
            _choice(TTS_ENGINES),
            "spoken replies: auto (default: piper if installed, else none), piper, openai, none",
        ),
        _Option("tts_voice", _nonempty, "piper voice name or .onnx path; openai voice name"),
        _Option("tts_url", _service_url, "OpenAI-compatible speech server (--tts-engine openai)"),
        _Option("tts_model", _nonempty, "model for --tts-engine openai (default tts-1)"),
        _Option("tts_api_key_file", _path, "file with the API key for the --tts-url server"),
        _Option("allow_remote_tts", _bool, "allow a non-loopback --tts-url", is_flag=True),
        _Option(
            "barge_in_min_ms",
            _int_range(0, 3000),
            "speech that interrupts the spoken reply, ms (default 300)",
        ),
        _Option(
            "replica_id",
            parse_replica_id,
            "this replica's name behind a load balancer (a-z, 0-9, -); starts session ids",
        ),
        _Option(
            "trusted_proxies",
            parse_trusted_proxy,
            "a reverse proxy (IP or CIDR) whose X-Forwarded-For is believed, repeatable",
            repeatable=True,
            singular="--trusted-proxy",
        ),
    )


def _option(name: str) -> _Option:
    return next(opt for opt in _options() if opt.name == name)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors are one line."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(self.prog, message)


def build_parser(prog: str = "local-ai-gateway serve") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        allow_abbrev=False,  # `--no` must not silently mean --no-tls
        description="Run the gateway. Each flag is also GATEWAY_<NAME> and a TOML key.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of these keys")
    for opt in _options():
        if opt.is_flag:
            parser.add_argument(opt.flag, dest=opt.name, action="store_true", default=None)
        elif opt.repeatable:
            parser.add_argument(opt.flag, dest=opt.name, action="append", help=opt.help)
        else:
            parser.add_argument(opt.flag, dest=opt.name, help=opt.help)
    return parser


def _convert(opt: _Option, raw: object, source: str) -> Any:
    """Turn one raw value (text, or a TOML value) into the field's type."""
    flag = opt.flag
    try:
        if opt.repeatable:
            items: list[object]
            if isinstance(raw, str) and source.startswith("GATEWAY_"):
                items = [part for part in raw.split(",") if part.strip()]
            elif isinstance(raw, list):
                items = list(raw)
            else:
                items = [raw]
            return tuple(opt.parse(str(item)) for item in items)
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        return opt.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(flag, f"{exc} (from {source})") from exc


def load_config(
    argv: Sequence[str],
    env: Mapping[str, str],
    read_file: Callable[[Path], str] = lambda p: p.read_text(encoding="utf-8"),
) -> Config:
    """Parse ``serve`` arguments; raises :class:`ConfigError` for any bad value."""
    args = vars(build_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    rank: dict[str, int] = {}  # where each value came from: 1 file, 2 environment, 3 flag

    config_path = args.pop("config", None) or env.get("GATEWAY_CONFIG")
    if config_path:
        try:
            table = tomllib.loads(read_file(Path(config_path)))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {config_path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{config_path} is not UTF-8 text: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{config_path} is not valid TOML: {exc}") from exc
        known = {opt.name: opt for opt in _options()}
        for key, raw in table.items():
            opt = known.get(key.replace("-", "_"))
            if opt is None:
                raise ConfigError("--config", f"unknown key {key!r} in {config_path}")
            values[opt.name] = _convert(opt, raw, config_path)
            rank[opt.name] = 1

    for opt in _options():
        if opt.env in env:
            values[opt.name] = _convert(opt, env[opt.env], opt.env)
            rank[opt.name] = 2
        raw = args.get(opt.name)
        if raw is not None:
            values[opt.name] = True if opt.is_flag else _convert(opt, raw, "command line")
            rank[opt.name] = 3

    prompt_file = values.pop("system_prompt_file", None)
    if prompt_file is not None and rank["system_prompt_file"] == rank.get("system_prompt"):
        raise ConfigError(
            "--system-prompt-file", "give the prompt or its file, not both in the same place"
        )
    if prompt_file is not None and rank["system_prompt_file"] > rank.get("system_prompt", 0):
        try:
            values["system_prompt"] = read_file(prompt_file).strip()
        except OSError as exc:
            raise ConfigError(
                "--system-prompt-file", f"cannot read {prompt_file}: {exc.strerror}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("--system-prompt-file", f"{prompt_file} is not UTF-8 text") from exc
    if "ollama_host" not in values and env.get("OLLAMA_HOST"):
        # Ollama's own variable, as its CLI and client read it.
        values["ollama_host"] = _convert(_option("ollama_host"), env["OLLAMA_HOST"], "OLLAMA_HOST")
    config = replace(Config(), **values)
    _check(config)
    return config


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _service_split(url: str) -> SplitResult:
    # Ollama's own reading: a bare "host:port" is http.
    return urlsplit(url if "://" in url else f"http://{url}")


def service_hostname(url: str) -> str:
    """The host part of a local service's address (Ollama, a speech server), with or without
    a scheme or port, as Ollama's client reads it."""
    return _service_split(url).hostname or ""


def _service_url(text: str) -> str:
    """An address as Ollama's client takes it (``127.0.0.1:11434``, ``http://host:port/``):
    a host, a port that is a port, and no user part (``a@b`` is b, which nobody means)."""
    text = _nonempty(text)
    split = _service_split(text)
    try:
        split.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        if split.netloc.count(":") > 1 and "[" not in split.netloc:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [::1]") from None
        raise ValueError(f"{text!r} has a bad port ({exc})") from None
    if not split.hostname:
        raise ValueError(f"{text!r} names no host")
    if "@" in split.netloc:
        raise ValueError(f"{text!r} has a user part; give only host and port")
    return text


def worker_count(config: Config, cores: int | None = None, platform: str = sys.platform) -> int:
    """How many media workers: ``--workers``, or one per core (at most
    :data:`MAX_WORKERS`, and never more than sessions); 1 inside a worker, and on Windows,
    where asyncio serves no Unix sockets (``_check`` refuses more there)."""
    if config.worker_socket is not None or platform == "win32":
        return 1
    if config.workers is not None:
        return config.workers
    available = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(available, MAX_WORKERS, config.max_sessions))


def _check(config: Config) -> None:
    """Rules that involve more than one option."""
    if config.worker_socket is not None:
        return  # a worker: the front checked the configuration; it listens on a socket
    if sys.platform == "win32" and (config.workers or 1) > 1:
        raise ConfigError(
            "--workers",
            "media workers talk over Unix sockets, which asyncio does not serve on Windows: "
            "use --workers 1 (the default there)",
        )
    if config.no_tls and not is_loopback(config.host):
        raise ConfigError(
            "--no-tls",
            f"refused on non-loopback host {config.host}: browsers need HTTPS for the "
            "microphone and the audio would cross the network unencrypted",
        )
    if config.auth == "none" and not is_loopback(config.host) and not config.allow_insecure:
        raise ConfigError(
            "--auth",
            f"serving on {config.host} with --auth none lets anyone who reaches the port talk "
            "to your models: use --auth api-key or --auth jwt (or --allow-insecure)",
        )
    if config.auth == "api-key" and config.api_keys_file is None:
        raise ConfigError("--api-keys-file", "required with --auth api-key")
    if config.auth == "jwt" and (config.jwt_secret_file is None) == (config.jwt_public_key is None):
        raise ConfigError(
            "--jwt-secret-file",
            "--auth jwt needs exactly one of --jwt-secret-file (HS256) "
            "or --jwt-public-key (RS256/ES256)",
        )
    if config.tts_engine == "openai" and not config.allow_remote_tts:
        tts_host = service_hostname(config.tts_url)
        if not is_loopback(tts_host):
            raise ConfigError(
                "--tts-url",
                f"{config.tts_url} is not on this machine; the reply's text would leave it, so "
                "the gateway only sends it to a remote speech server with --allow-remote-tts",
            )
    if config.turn_urls and config.turn_secret_file is None:
        raise ConfigError(
            "--turn-secret-file",
            "required with --turn-url: the secret shared with the TURN server "
            "(coturn's static-auth-secret)",
        )
    if config.turn_secret_file is not None and not config.turn_urls:
        raise ConfigError("--turn-url", "required with --turn-secret-file: the TURN server")
    if (
        config.asr_url
        and not config.allow_remote_asr
        and not parse_asr_url(config.asr_url).loopback
    ):
        raise ConfigError(
            "--asr-url",
            f"{config.asr_url} is not on this machine; what people say would leave it, so "
            "the gateway only sends audio to a remote ASR server with --allow-remote-asr",
        )
    host = service_hostname(config.ollama_host)
    if not is_loopback(host) and not config.allow_remote_ollama:
        raise ConfigError(
            "--ollama-host",
            f"{config.ollama_host} is not on this machine; Ollama has no authentication, so "
            "the gateway only talks to a remote one with --allow-remote-ollama",
        )
