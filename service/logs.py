"""Logging set-up: readable text or one JSON object per line, for the service and uvicorn alike.

Every event is one line in either format: in text, what a client can choose (a path, a header) is escaped by
:func:`escape` (control characters, line breaks and terminal escapes become ``\\xNN``); JSON escapes them itself.
uvicorn's own access logger stays silent: the service writes its access log itself (``service.accesslog``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def escape(text: str) -> str:
    """``text`` with non-printable characters and backslashes as ``\\xNN`` / ``\\\\``: one safe log line."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, one C-level scan
    return "".join(
        "\\\\"
        if ch == "\\"
        else (ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        for ch in text
    )


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, the message escaped (a traceback, if any, follows it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "message": ..., <extra fields>}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Route the service's and uvicorn's loggers to stderr in ``fmt`` (``text`` or ``json``) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # uvicorn writes an access line whenever this logger has a handler, its own access_log option
    # notwithstanding (worker processes re-configure logging after uvicorn did): none, and no propagation.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
