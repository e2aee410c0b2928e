"""Configuration (``gateway/config.py``) and the CLI's handling of it: every option as a flag,
a ``GATEWAY_*`` variable and a TOML key; flag > env > TOML > default; bad values name the
flag in one line."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway import __version__
from gateway.errors import ConfigError
from gateway.ops.cli import main
from gateway.ops.config import Config, load_config, parse_origin, partial_interval_ms

# --- helpers ---


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def read_utf8(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def config_error(
    argv: list[str],
    env: dict[str, str] | None = None,
    read_file: Callable[[Path], str] = read_utf8,
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env or {}, read_file)
    return info.value


@dataclass(frozen=True)
class Case:
    """One option, a non-default value, and how each source spells it."""

    name: str
    flag_args: tuple[str, ...]
    env_value: str
    toml_value: str  # a TOML literal
    expected: object

    @property
    def env(self) -> str:
        return "GATEWAY_" + self.name.upper()

    def __str__(self) -> str:
        return self.name


CASES = [
    # Loopback values, so that rules for exposed hosts (TLS, auth) stay out of the way.
    Case("host", ("--host", "127.0.0.2"), "127.0.0.2", '"127.0.0.2"', "127.0.0.2"),
    Case("port", ("--port", "9443"), "9443", "9443", 9443),
    Case(
        "cert_dir", ("--cert-dir", "/srv/certs"), "/srv/certs", '"/srv/certs"', Path("/srv/certs")
    ),
    Case("no_tls", ("--no-tls",), "true", "true", True),
    Case(
        "asr_engine",
        ("--asr-engine", "faster-whisper"),
        "faster-whisper",
        '"faster-whisper"',
        "faster-whisper",
    ),
    Case("asr_model", ("--asr-model", "base.en"), "base.en", '"base.en"', "base.en"),
    Case("asr_device", ("--asr-device", "cuda"), "cuda", '"cuda"', "cuda"),
    Case("vad_silence_ms", ("--vad-silence-ms", "300"), "300", "300", 300),
    Case("turn_detection", ("--turn-detection", "text"), "text", '"text"', "text"),
    Case("turn_min_silence_ms", ("--turn-min-silence-ms", "250"), "250", "250", 250),
    Case("turn_likely_silence_ms", ("--turn-likely-silence-ms", "700"), "700", "700", 700),
    Case(
        "turn_model",
        ("--turn-model", "/m/st.onnx"),
        "/m/st.onnx",
        '"/m/st.onnx"',
        Path("/m/st.onnx"),
    ),
    Case("partial_interval_ms", ("--partial-interval-ms", "0"), "0", "0", 0),
    Case("max_sessions", ("--max-sessions", "2"), "2", "2", 2),
    Case(
        "ice_servers",
        ("--ice-server", "stun:stun.example:3478", "--ice-server", "turn:turn.example"),
        "stun:stun.example:3478, turn:turn.example",
        '["stun:stun.example:3478", "turn:turn.example"]',
        ("stun:stun.example:3478", "turn:turn.example"),
    ),
    Case("log_level", ("--log-level", "debug"), "debug", '"debug"', "debug"),
    Case(
        "ollama_host",
        ("--ollama-host", "http://127.0.0.1:11500"),
        "http://127.0.0.1:11500",
        '"http://127.0.0.1:11500"',
        "http://127.0.0.1:11500",
    ),
    Case(
        "ollama_model", ("--ollama-model", "qwen2.5:3b"), "qwen2.5:3b", '"qwen2.5:3b"', "qwen2.5:3b"
    ),
    Case(
        "system_prompt", ("--system-prompt", "Be terse."), "Be terse.", '"Be terse."', "Be terse."
    ),
    Case("history_turns", ("--history-turns", "3"), "3", "3", 3),
    Case("ollama_temperature", ("--ollama-temperature", "0.2"), "0.2", "0.2", 0.2),
    Case("ollama_num_ctx", ("--ollama-num-ctx", "4096"), "4096", "4096", 4096),
    Case("ollama_keep_alive", ("--ollama-keep-alive", "5m"), "5m", '"5m"', "5m"),
    Case("llm_first_token_timeout", ("--llm-first-token-timeout", "10"), "10", "10", 10.0),
    Case("llm_timeout", ("--llm-timeout", "60.5"), "60.5", "60.5", 60.5),
    Case("tts_engine", ("--tts-engine", "openai"), "openai", '"openai"', "openai"),
    Case("tts_voice", ("--tts-voice", "af_heart"), "af_heart", '"af_heart"', "af_heart"),
    Case(
        "tts_url",
        ("--tts-url", "http://127.0.0.1:8880"),
        "http://127.0.0.1:8880",
        '"http://127.0.0.1:8880"',
        "http://127.0.0.1:8880",
    ),
    Case("tts_model", ("--tts-model", "kokoro"), "kokoro", '"kokoro"', "kokoro"),
    Case("barge_in_min_ms", ("--barge-in-min-ms", "250"), "250", "250", 250),
    Case("turn_ttl_s", ("--turn-ttl-s", "600"), "600", "600", 600),
]


# --- defaults ---


def test_defaults() -> None:
    config = load_config([], {})
    assert config == Config()
    assert config.host == "127.0.0.1"
    assert config.port == 8001
    assert config.cert_dir == Path("certs")
    assert config.no_tls is False
    assert config.tls is True
    assert config.asr_engine == "openai-whisper"
    assert config.asr_model == "tiny.en"
    assert config.asr_device == "auto"
    assert config.vad_silence_ms == 1000  # the longest wait; turn detection ends most sooner
    assert (config.turn_detection, config.turn_min_silence_ms) == ("auto", 200)
    assert (config.turn_likely_silence_ms, config.partial_interval_ms) == (500, None)
    assert partial_interval_ms(config, "cuda") == 800  # auto: captions where ASR has time
    assert partial_interval_ms(config, "cpu") == 0
    assert partial_interval_ms(replace(config, partial_interval_ms=600), "cpu") == 600
    assert config.turn_model is None
    assert config.max_sessions == 8
    assert config.ice_servers == ()  # no public STUN: LAN/VPN use must not wait on it
    assert config.log_level == "info"
    assert config.url == "https://127.0.0.1:8001/"


# --- each option in each form ---


@pytest.mark.parametrize("case", CASES, ids=str)
def test_option_from_flag(case: Case) -> None:
    assert getattr(load_config(list(case.flag_args), {}), case.name) == case.expected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_option_from_env(case: Case) -> None:
    assert getattr(load_config([], {case.env: case.env_value}), case.name) == case.expected


@pytest.mark.parametrize("case", CASES, ids=str)
def test_option_from_toml(case: Case, tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"{case.name} = {case.toml_value}\n")
    assert getattr(load_config(["--config", path], {}), case.name) == case.expected


def test_toml_keys_may_use_dashes(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'asr-model = "small"\nvad-silence-ms = 250\n')
    config = load_config(["--config", path], {})
    assert (config.asr_model, config.vad_silence_ms) == ("small", 250)


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 9100\n")
    assert load_config([], {"GATEWAY_CONFIG": path}).port == 9100


def test_values_are_normalised() -> None:
    config = load_config(
        ["--asr-engine", " Faster-Whisper ", "--log-level", "WARNING", "--asr-model", " x "], {}
    )
    assert (config.asr_engine, config.log_level, config.asr_model) == (
        "faster-whisper",
        "warning",
        "x",
    )


# --- precedence ---

PRECEDENCE = [
    # name, flag text, env text, TOML literal, default, and the three values they mean
    ("port", "9001", "9002", "9003", 8001, (9001, 9002, 9003)),
    ("asr_model", "base", "small", '"medium"', "tiny.en", ("base", "small", "medium")),
    ("log_level", "debug", "warning", '"error"', "info", ("debug", "warning", "error")),
    ("vad_silence_ms", "300", "700", "900", 1000, (300, 700, 900)),
]


@pytest.mark.parametrize(
    ("name", "flag", "env", "toml", "default", "values"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE]
)
@pytest.mark.parametrize(
    ("use_flag", "use_env", "use_toml", "winner"),
    [
        (True, True, True, 0),
        (True, False, True, 0),
        (True, True, False, 0),
        (False, True, True, 1),
        (False, False, True, 2),
        (False, True, False, 1),
        (False, False, False, None),
    ],
)
def test_flag_beats_env_beats_toml_beats_default(
    tmp_path: Path,
    name: str,
    flag: str,
    env: str,
    toml: str,
    default: object,
    values: tuple[object, object, object],
    use_flag: bool,
    use_env: bool,
    use_toml: bool,
    winner: int | None,
) -> None:
    argv = ["--config", write_toml(tmp_path, f"{name} = {toml}\n")] if use_toml else []
    if use_flag:
        argv += ["--" + name.replace("_", "-"), flag]
    environ = {"GATEWAY_" + name.upper(): env} if use_env else {}
    expected = default if winner is None else values[winner]
    assert getattr(load_config(argv, environ), name) == expected


def test_repeated_ice_servers_from_a_flag_replace_the_others(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'ice_servers = ["stun:from-toml"]\n')
    env = {"GATEWAY_ICE_SERVERS": "stun:from-env-1,stun:from-env-2"}
    assert load_config(["--config", path], env).ice_servers == (
        "stun:from-env-1",
        "stun:from-env-2",
    )
    config = load_config(
        ["--config", path, "--ice-server", "turn:a", "--ice-server", "turn:b"], env
    )
    assert config.ice_servers == ("turn:a", "turn:b")


def test_an_empty_env_list_clears_the_ice_servers(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'ice_servers = "stun:one"\n')
    assert load_config(["--config", path], {}).ice_servers == ("stun:one",)
    assert load_config(["--config", path], {"GATEWAY_ICE_SERVERS": ""}).ice_servers == ()


def test_no_tls_from_env_can_be_false_over_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "no_tls = true\n")
    assert load_config(["--config", path], {}).no_tls is True
    assert load_config(["--config", path], {"GATEWAY_NO_TLS": "false"}).no_tls is False
    assert load_config(["--no-tls"], {"GATEWAY_NO_TLS": "0"}).no_tls is True


def test_system_prompt_file_is_read_and_stripped(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\n  Answer in French.  \n", encoding="utf-8")
    assert load_config(["--system-prompt-file", str(prompt)], {}).system_prompt == (
        "Answer in French."
    )
    error = config_error(["--system-prompt-file", str(tmp_path / "missing.txt")])
    assert error.flag == "--system-prompt-file"


def test_a_prompt_and_a_prompt_file_rank_as_any_two_values(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the TOML file, whichever of the two
    options each place gives; the same place giving both is refused."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("From the file.", encoding="utf-8")
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'system_prompt_file = "{prompt}"\n', encoding="utf-8")
    env = {"GATEWAY_SYSTEM_PROMPT_FILE": str(prompt)}
    assert load_config(["--system-prompt", "From the flag."], env).system_prompt == (
        "From the flag."
    )
    flag_wins = ["--config", str(toml), "--system-prompt", "From the flag."]
    assert load_config(flag_wins, {}).system_prompt == "From the flag."
    env_wins = {"GATEWAY_SYSTEM_PROMPT": "From the environment."}
    assert load_config(["--config", str(toml)], env_wins).system_prompt == ("From the environment.")
    assert load_config(["--system-prompt-file", str(prompt)], env_wins).system_prompt == (
        "From the file."
    )
    both = ["--system-prompt", "x", "--system-prompt-file", str(prompt)]
    assert config_error(both).flag == "--system-prompt-file"


def test_a_remote_speech_server_needs_allow_remote_tts() -> None:
    remote = ["--tts-engine", "openai", "--tts-url", "http://192.168.1.5:8000"]
    with pytest.raises(ConfigError, match=r"--tts-url.*--allow-remote-tts"):
        load_config(remote, {})
    assert load_config([*remote, "--allow-remote-tts"], {}).allow_remote_tts is True
    # Only the openai engine sends text anywhere.
    assert load_config(["--tts-url", "http://192.168.1.5:8000"], {}).tts_engine == "auto"


def test_ollama_host_falls_back_to_ollamas_own_variable() -> None:
    assert load_config([], {"OLLAMA_HOST": "http://127.0.0.1:11500"}).ollama_host == (
        "http://127.0.0.1:11500"
    )
    env = {"OLLAMA_HOST": "http://127.0.0.1:11500", "GATEWAY_OLLAMA_HOST": "http://localhost:11600"}
    assert load_config([], env).ollama_host == "http://localhost:11600"
    for local in ("localhost", "[::1]:11434", "http://127.0.0.1", "127.0.0.1:11434/"):
        assert load_config(["--ollama-host", local], {}).ollama_host == local


# --- bad values ---

BAD = [
    # argv, env, the flag named, a fragment of the message
    (["--port", "0"], {}, "--port", "must be between 1 and 65535, got 0 (from command line)"),
    (["--port", "70000"], {}, "--port", "must be between 1 and 65535, got 70000"),
    (["--port", "abc"], {}, "--port", "expected an integer, got 'abc'"),
    (["--port", "80.5"], {}, "--port", "expected an integer"),
    ([], {"GATEWAY_PORT": "abc"}, "--port", "expected an integer, got 'abc' (from GATEWAY_PORT)"),
    (["--asr-engine", "whisper.cpp"], {}, "--asr-engine", "openai-whisper, faster-whisper"),
    (["--asr-device", "tpu"], {}, "--asr-device", "must be one of auto, cpu, cuda; got 'tpu'"),
    (["--log-level", "verbose"], {}, "--log-level", "must be one of"),
    (["--vad-silence-ms", "99"], {}, "--vad-silence-ms", "between 100 and 5000, got 99"),
    (["--vad-silence-ms", "5001"], {}, "--vad-silence-ms", "between 100 and 5000, got 5001"),
    (["--max-sessions", "0"], {}, "--max-sessions", "between 1 and 1000"),
    (["--max-sessions", "1001"], {}, "--max-sessions", "between 1 and 1000"),
    (["--ice-server", "http://example.com"], {}, "--ice-server", "stun:, turn: or turns: URL"),
    (["--ice-server", "stun:"], {}, "--ice-server", "stun:, turn: or turns: URL"),
    (["--ice-server", "turns:"], {}, "--ice-server", "stun:, turn: or turns: URL"),
    (["--ice-server", "stun:a b"], {}, "--ice-server", "stun:, turn: or turns: URL"),
    (
        [],
        {"GATEWAY_ICE_SERVERS": "stun:ok,ftp:bad"},
        "--ice-server",
        "'ftp:bad' (from GATEWAY_ICE_SERVERS)",
    ),
    (["--host", ""], {}, "--host", "expected an IP address or host name"),
    (["--host", "a b"], {}, "--host", "expected an IP address or host name"),
    (["--asr-model", "  "], {}, "--asr-model", "must not be empty"),
    # As Ollama's client reads it: one that client would refuse, or read as another host.
    (["--ollama-host", "127.0.0.1:114340"], {}, "--ollama-host", "has a bad port"),
    (["--ollama-host", "127.0.0.1:11434x"], {}, "--ollama-host", "has a bad port"),
    (["--ollama-host", "::1"], {}, "--ollama-host", "IPv6 address in brackets, [::1]"),
    (["--ollama-host", "http://127.0.0.1:11434@example.com"], {}, "--ollama-host", "user part"),
    ([], {"OLLAMA_HOST": ":11434"}, "--ollama-host", "names no host (from OLLAMA_HOST)"),
    (["--tts-url", "http://127.0.0.1:99999/v1"], {}, "--tts-url", "has a bad port"),
    (["--cert-dir", ""], {}, "--cert-dir", "must not be empty"),
    ([], {"GATEWAY_NO_TLS": "maybe"}, "--no-tls", "expected true or false, got 'maybe'"),
    (["--ollama-temperature", "nan"], {}, "--ollama-temperature", "between 0 and 2"),
    (["--llm-timeout", "fast"], {}, "--llm-timeout", "expected a number"),
    (["--cors-origin", "http://user@host:3000"], {}, "--cors-origin", "has user info"),
    (["--cors-origin", "https://app.example/x"], {}, "--cors-origin", "has a path"),
    (["--cors-origin", "app.example:3000"], {}, "--cors-origin", "is not an origin like"),
    ([], {"GATEWAY_CORS_ORIGINS": "https://ok.example,ftp://x"}, "--cors-origin", "'ftp://x'"),
    (["--turn-url", "stun:stun.example"], {}, "--turn-url", "expected a turn: or turns: URL"),
    (["--turn-url", "turn:[2001:db8::1]"], {}, "--turn-url", "IPv6"),
    ([], {"GATEWAY_TURN_URLS": "turn:ok.example,turns:x?transport=udp"}, "--turn-url", "tcp"),
    (["--turn-ttl-s", "59"], {}, "--turn-ttl-s", "between 60 and 86400, got 59"),
    (["--turn-ttl-s", "86401"], {}, "--turn-ttl-s", "between 60 and 86400"),
]


@pytest.mark.parametrize(("argv", "env", "flag", "fragment"), BAD)
def test_bad_value_names_the_flag(
    argv: list[str], env: dict[str, str], flag: str, fragment: str
) -> None:
    error = config_error(argv, env)
    assert error.flag == flag
    assert str(error).startswith(f"{flag}: ")
    assert fragment in str(error)


@pytest.mark.parametrize("value", ["100", "5000"])
def test_vad_silence_ms_bounds_are_accepted(value: str) -> None:
    assert load_config(["--vad-silence-ms", value], {}).vad_silence_ms == int(value)


@pytest.mark.parametrize(
    ("toml", "flag", "fragment"),
    [
        ('port = "abc"\n', "--port", "expected an integer, got 'abc' (from "),
        ("port = true\n", "--port", "expected an integer, got 'true'"),
        ("port = 80.5\n", "--port", "expected an integer"),
        ('asr_engine = "x"\n', "--asr-engine", "must be one of"),
        ('ice_servers = ["stun:ok", "http://no"]\n', "--ice-server", "'http://no'"),
        ('colour = "blue"\n', "--config", "unknown key 'colour'"),
        ("[server]\nport = 1\n", "--config", "unknown key 'server'"),
        ('config = "other.toml"\n', "--config", "unknown key 'config'"),
        ("port = \n", "--config", "is not valid TOML"),
        ("port = 1\nport = 2\n", "--config", "is not valid TOML"),
    ],
)
def test_bad_toml(tmp_path: Path, toml: str, flag: str, fragment: str) -> None:
    path = write_toml(tmp_path, toml)
    error = config_error(["--config", path])
    assert error.flag == flag
    assert fragment in str(error)
    if flag != "--config":
        assert f"(from {path})" in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    error = config_error(["--config", str(missing)])
    assert error.flag == "--config"
    assert str(error) == f"--config: cannot read {missing}: No such file or directory"


def test_config_file_that_is_a_folder(tmp_path: Path) -> None:
    error = config_error(["--config", str(tmp_path)])
    assert str(error) == f"--config: cannot read {tmp_path}: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_config_file(tmp_path: Path) -> None:
    path = Path(write_toml(tmp_path, "port = 9000\n"))
    path.chmod(0)
    try:
        error = config_error(["--config", str(path)])
    finally:
        path.chmod(0o600)
    assert str(error) == f"--config: cannot read {path}: Permission denied"


def test_config_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00port = 1")
    error = config_error(["--config", str(path)])
    assert error.flag == "--config"
    assert f"{path} is not UTF-8 text" in str(error)


def test_read_errors_go_through_the_injected_reader() -> None:
    def deny(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    error = config_error(["--config", "/etc/gateway.toml"], read_file=deny)
    assert str(error) == "--config: cannot read /etc/gateway.toml: Permission denied"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--port"], "argument --port: expected one argument"),
        (["stray"], "unrecognized arguments: stray"),
    ],
)
def test_bad_command_line(argv: list[str], fragment: str) -> None:
    assert fragment in str(config_error(argv))


# --- plain HTTP only on loopback ---


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.2", "192.168.1.20", "gateway.lan"])
def test_no_tls_is_refused_off_loopback(host: str) -> None:
    error = config_error(["--no-tls", "--host", host])
    assert error.flag == "--no-tls"
    assert f"refused on non-loopback host {host}" in str(error)


def test_no_tls_from_env_and_host_from_toml_is_refused_too(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'host = "0.0.0.0"\n')
    assert config_error(["--config", path], {"GATEWAY_NO_TLS": "1"}).flag == "--no-tls"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8001/"),
        ("127.0.0.2", "http://127.0.0.2:8001/"),
        ("localhost", "http://localhost:8001/"),
        ("::1", "http://[::1]:8001/"),
    ],
)
def test_no_tls_is_accepted_on_loopback(host: str, url: str) -> None:
    config = load_config(["--no-tls", "--host", host], {})
    assert (config.no_tls, config.tls, config.host) == (True, False, host)
    assert config.url == url


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "https://127.0.0.1:9000/"), ("::", "https://127.0.0.1:9000/")],
)
def test_url_of_a_wildcard_host_is_loopback(host: str, url: str) -> None:
    assert Config(host=host, port=9000).url == url


# --- the CLI ---


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("GATEWAY_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--port", "abc"], "--port"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--asr-engine", "nope"], "--asr-engine"),
        (["--vad-silence-ms", "20"], "--vad-silence-ms"),
        (["--ice-server", "http://x"], "--ice-server"),
        (["--no-tls", "--host", "0.0.0.0"], "--no-tls"),
        (["--bogus"], "--bogus"),
    ],
)
def test_cli_bad_value_prints_one_line_and_returns_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1
    assert err.startswith("local-ai-gateway: error: ")
    assert flag in err


def test_cli_bad_env_value(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("GATEWAY_MAX_SESSIONS", "lots")
    assert main([]) == 2
    _, err = capsys.readouterr()
    assert err == (
        "local-ai-gateway: error: --max-sessions: expected an integer, got 'lots' "
        "(from GATEWAY_MAX_SESSIONS)\n"
    )


def test_cli_unknown_command(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["frobnicate"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("local-ai-gateway: error: unknown command 'frobnicate'\n")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_cli_version(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert out == f"local-ai-gateway {__version__}\n"
    assert err == ""


def test_cli_bad_cors_origin_is_one_line_and_exit_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[Config] = []

    def serve(config: Config) -> int:
        served.append(config)
        return 0

    clean_env.setattr("gateway.ops.cli.serve", serve)
    assert main(["serve", "--no-tls", "--cors-origin", "http://user@host:3000"]) == 2
    assert served == []
    _, err = capsys.readouterr()
    assert err == (
        "local-ai-gateway: error: --cors-origin: 'http://user@host:3000' has user info (user@); "
        "an origin is scheme://host[:port] (from command line)\n"
    )


# --- origins: the one parser behind --cors-origin and the CORS checks ---


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://app.example", "https://app.example"),
        ("HTTPS://App.Example:443", "https://app.example"),
        ("http://app.example:80", "http://app.example"),
        ("http://app.example:443", "http://app.example:443"),
        ("https://app.example:03000", "https://app.example:3000"),
        ("  http://localhost:3000  ", "http://localhost:3000"),
        ("http://10.8.0.2:3000", "http://10.8.0.2:3000"),
        ("https://[FD00:0:0::1]:8001", "https://[fd00::1]:8001"),
        ("https://[::1]:443", "https://[::1]"),
    ],
)
def test_parse_origin(text: str, origin: str) -> None:
    assert parse_origin(text) == origin
    assert parse_origin(origin) == origin


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is not an origin like"),
        ("null", "is not an origin like"),
        ("app.example", "is not an origin like"),
        ("ws://app.example", "is not an origin like"),
        ("file:///etc", "is not an origin like"),
        ("https://", "has no host"),
        ("https://:3000", "has no host"),
        ("http://user@host:3000", "has user info"),
        ("http://user:pw@host", "has user info"),
        ("https://app.example/", "has a path, query or fragment"),
        ("https://app.example/path", "has a path, query or fragment"),
        ("https://app.example?x=1", "has a path, query or fragment"),
        ("https://app.example#top", "has a path, query or fragment"),
        ("https://app.example:", "has no valid port"),
        ("https://app.example:0", "has no valid port"),
        ("https://app.example:65536", "has no valid port"),
        ("https://app.example:http", "has no valid port"),
        ("https://app.example:\uff13", "has no valid port"),  # a fullwidth digit
        ("https://app example", "has no valid host"),
        ("https://app\n.example", "has no valid host"),
        ("https://bücher.example", "has no valid host"),  # browsers send xn--
        ("https://[::1", "has no valid host"),
        ("https://[::1]x", "has no valid port"),
        ("https://[fe80::1%eth0]", "has no valid host"),
        ("https://[not-v6]", "has no valid host"),
    ],
)
def test_parse_origin_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        parse_origin(text)
    assert "\n" not in str(caught.value)  # the text is quoted, so one line


def test_cors_origins_are_stored_normalised_and_a_trailing_slash_is_forgiven() -> None:
    argv = ["--cors-origin", "HTTP://LocalHost:3000/", "--cors-origin", "https://app.example:443"]
    config = load_config(argv, {})
    assert config.cors_origins == ("http://localhost:3000", "https://app.example")


# --- TURN relay ---


def test_turn_relay_from_each_source(tmp_path: Path) -> None:
    urls = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349")
    secret = str(tmp_path / "turn-secret")  # read at start-up (build_app), not here
    flags = ["--turn-url", urls[0], "--turn-url", urls[1], "--turn-secret-file", secret]
    env = {"GATEWAY_TURN_URLS": ",".join(urls), "GATEWAY_TURN_SECRET_FILE": secret}
    toml = write_toml(tmp_path, f"turn_urls = {list(urls)!r}\nturn_secret_file = {secret!r}\n")
    for config in (
        load_config(flags, {}),
        load_config([], env),
        load_config(["--config", toml], {}),
    ):
        assert (config.turn_urls, config.turn_secret_file) == (urls, Path(secret))
        assert config.turn_ttl_s == 3600  # the default


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["--turn-url", "turn:turn.example.org"], "--turn-secret-file", "required with --turn-url"),
        (["--turn-secret-file", "/etc/turn-secret"], "--turn-url", "required with"),
    ],
)
def test_turn_needs_both_a_url_and_the_secret(argv: list[str], flag: str, fragment: str) -> None:
    error = config_error(argv)
    assert error.flag == flag
    assert fragment in str(error)
