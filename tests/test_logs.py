from __future__ import annotations

import json
import logging

from gateway.ops.logs import JsonFormatter


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
