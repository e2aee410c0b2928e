"""Logging set-up: human text by default, one JSON object per line with --log-format json.

Text a client controls (a path, a header) goes into a log message through :func:`loggable`:
a decoded path may hold a newline (``%0A``), which would start a forged line in a text log.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Enough for any real path or header a browser sends; a request line may be 8 KiB.
MAX_LOGGED_CHARS = 200


def loggable(text: str | None, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters (plus a marker saying
    how many were cut). What is not printable (line breaks, terminal escapes) is written as
    Python writes it in a ``repr``, and so is the backslash, so that no escape can be faked.
    ``None`` (a header that is absent) is ``-``."""
    if text is None:
        return "-"
    pieces: list[str] = []
    size = 0
    for index, char in enumerate(text):  # stops after `limit` characters, however long
        piece = char if char.isprintable() and char != "\\" else repr(char)[1:-1]
        if size + len(piece) > limit:
            pieces.append(f"...(+{len(text) - index})")
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


class JsonFormatter(logging.Formatter):
    """Fields a log shipper can index; the message is already %-formatted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
