from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ops.logs import JsonFormatter, loggable


def test_json_lines_carry_the_formatted_message() -> None:
    record = logging.LogRecord(
        "gateway.http.webrtc", logging.INFO, __file__, 1, "[%s] ended", ("abc",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "[abc] ended"
    assert entry["level"] == "info"
    assert entry["logger"] == "gateway.http.webrtc"
    assert entry["time"].endswith("+00:00")


def test_json_lines_include_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/offer", "/offer"),
        ("/x\n2026-01-01 INFO forged", "/x\\n2026-01-01 INFO forged"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[31mred", "\\x1b[31mred"),  # terminal escapes
        ("a\u2028b\x85c", "a\\u2028b\\x85c"),  # line breaks to str.splitlines()
        ("back\\slash", "back\\\\slash"),  # so an escape cannot be faked either
        ("café ☕", "café ☕"),  # printable text is left readable
        (None, "-"),
    ],
)
def test_loggable_escapes_what_could_break_a_line(text: str | None, expected: str) -> None:
    assert loggable(text) == expected


def test_loggable_truncates() -> None:
    assert loggable("a" * 10, limit=4) == "aaaa...(+6)"
    assert loggable("\n" * 10, limit=4) == "\\n\\n...(+8)"
    assert loggable("abcd", limit=4) == "abcd"


@given(st.text(max_size=300), st.integers(min_value=1, max_value=100))
def test_loggable_is_one_bounded_line(text: str, limit: int) -> None:
    out = loggable(text, limit)
    assert len(out.splitlines()) <= 1
    assert out.isprintable()
    assert len(out) <= limit + len("...(+300)")
