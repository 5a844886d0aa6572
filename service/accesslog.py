"""The access log, off the request path: one tuple per request, formatted and written in batches.

Through :mod:`logging` an access line cost ~16 µs of the request's CPU (a ``LogRecord``, the caller lookup,
the formatter, one ``write`` per line), a quarter of the batch-1 throughput. Here a request appends a tuple;
every ``interval`` seconds (or every ``batch`` requests) the event loop formats the tuples directly, in the
same two formats as :mod:`service.logs` (text: the ``bnserve.access`` line of the logging formatter; JSON:
the same keys as :class:`service.logs.JsonFormatter`), and writes them with one ``write``. Nothing is dropped:
:meth:`AccessLog.close` writes what is left. Every field a client chose (method, path) is escaped
(:func:`service.logs.escape`), so a line is always exactly one line and carries no terminal escapes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

import orjson

from service.logs import escape
from service.timers import call_later_queued

NAME = "bnserve.access"


class AccessLog:
    """Buffered access-log lines for one event loop; ``fmt`` is ``text`` or ``json``."""

    def __init__(
        self, fmt: str, stream: TextIO | None = None, *, interval: float = 0.02, batch: int = 64
    ) -> None:
        """Lines are written every ``interval`` seconds or every ``batch`` lines: small flushes, because a flush
        holds the event loop (~2.4 us a line: 500 lines, 1.2 ms, delayed every request behind them, a tail the
        p99 showed)."""
        self.fmt = fmt
        self.stream = stream
        self.interval = interval
        self.batch = batch
        self._pending: list[tuple[Any, ...]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""  # the current second, as text and JSON format it
        self._utc = ""
        self._escaped: dict[str, str] = {}

    def record(
        self,
        method: str,
        path: str,
        status: int,
        seconds: float,
        request_id: str,
        protocol: str,
        model: str,
        version: int | None,
        rows: int | None,
        client: str | None,
    ) -> None:
        """Note one finished request (a tuple append); the line is written at the next flush."""
        self._pending.append(
            (time.time(), method, path, status, seconds, request_id, protocol, model, version, rows, client)
        )
        if len(self._pending) >= self.batch:
            self.flush()
        elif self._timer is None:
            try:
                # A flush queued when due may run after a full batch was flushed: it then writes the lines
                # since, a little early, and cancels the timer armed for them. Harmless.
                self._timer = call_later_queued(asyncio.get_running_loop(), self.interval, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()

    def flush(self) -> None:
        """Format and write every pending line in one write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        lines = [self._json(entry) if self.fmt == "json" else self._text(entry) for entry in pending]
        stream = self.stream or sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail requests
            pass

    close = flush

    def _asctime(self, t: float) -> str:
        """``logging``'s default ``%(asctime)s`` (local time, milliseconds), the second part cached."""
        second = self._tick(t)
        return f"{self._stamp},{int((t - second) * 1000):03d}"

    def _tick(self, t: float) -> int:
        """The whole second of ``t``, its two renderings cached until the next second."""
        second = int(t)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return second

    def _text(self, entry: tuple[Any, ...]) -> str:
        t, method, path, status, seconds = entry[:5]
        return (
            f"{self._asctime(t)} INFO {NAME}: {self._safe(method)} {self._safe(path)} {status} "
            f"{seconds * 1e3:.2f}ms\n"
        )

    def _safe(self, text: str) -> str:
        """``text`` cut to 200 characters and escaped, remembered: a service sees a few methods and paths."""
        safe = self._escaped.get(text)
        if safe is None:
            if len(self._escaped) >= 4096:  # paths can be anything a client sends
                self._escaped.clear()
            safe = self._escaped[text] = escape(text[:200])
        return safe

    def _json(self, entry: tuple[Any, ...]) -> str:
        t, method, path, status, seconds, request_id, protocol, model, version, rows, client = entry
        method, path = self._safe(method), self._safe(path)
        fields = {
            "ts": f"{self._utc}.{int((t - self._tick(t)) * 1000):03d}Z",
            "level": "info",
            "logger": NAME,
            "message": f"{method} {path} {status} {seconds * 1e3:.2f}ms",
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1e3, 3),
            "protocol": protocol,
            "model": model or None,
            "model_version": version,
            "rows": rows,
            "client": client,
        }
        return orjson.dumps(fields).decode() + "\n"
