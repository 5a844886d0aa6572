"""Log lines are one line each and carry no client-chosen control characters, in both formats."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import pytest

from service.accesslog import AccessLog
from service.logs import JsonFormatter, TextFormatter, configure_logging, escape
from tests.service.conftest import run_on_uvloop

FORGED = "/v2/x\n2026-01-01 00:00:00,000 INFO bnserve.access: GET /admin 200 0.1ms\x1b[31m\\"


def test_escape_keeps_printable_text_and_escapes_the_rest() -> None:
    assert escape("/v2/models/digits/infer") == "/v2/models/digits/infer"
    assert escape("/é/ü") == "/é/ü"
    assert escape("a\nb\rc\x1b[2Jd\\e\x7f\u2028") == "a\\x0ab\\x0dc\\x1b[2Jd\\\\e\\x7f\\u2028"
    assert escape(FORGED).count("\n") == 0


def entry(log: AccessLog, path: str) -> None:
    log.record("POST", path, 200, 0.00123, "abc", "v2", "digits", 1, 1, "127.0.0.1")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_lines_are_one_line_each_with_the_path_escaped(fmt: str) -> None:
    out = io.StringIO()
    log = AccessLog(fmt, out)
    entry(log, FORGED)
    entry(log, "/v2/models/digits/infer")
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "\x1b" not in out.getvalue()
    if fmt == "json":
        first, second = (json.loads(line) for line in lines)
        assert first["path"] == escape(FORGED) and first["logger"] == "bnserve.access"
        assert second["message"] == "POST /v2/models/digits/infer 200 1.23ms"
        assert (second["status"], second["rows"], second["model_version"]) == (200, 1, 1)
    else:
        assert lines[1].endswith(" INFO bnserve.access: POST /v2/models/digits/infer 200 1.23ms")
        assert lines[0].endswith(" 200 1.23ms") and "\\x0a" in lines[0]


def test_text_access_line_matches_the_logging_formatter() -> None:
    """The direct formatting writes what the logging formatter would have, timestamp included."""
    out = io.StringIO()
    log = AccessLog("text", out)
    entry(log, "/v2/models/digits/infer")
    log.flush()
    record = logging.LogRecord("bnserve.access", logging.INFO, "", 0, "%s %s %d %.2fms", None, None)
    record.args = ("POST", "/v2/models/digits/infer", 200, 1.23)
    expected = TextFormatter().format(record)
    # Same layout; the timestamps differ by the instant each was taken.
    assert out.getvalue().split(" ", 2)[2] == expected.split(" ", 2)[2] + "\n"


def test_lines_are_written_by_the_loop_after_the_interval_and_none_is_lost() -> None:
    out = io.StringIO()

    async def main() -> tuple[str, str]:
        log = AccessLog("text", out, interval=0.05, batch=1000)
        for _ in range(10):
            entry(log, "/v2/h")
        before = out.getvalue()
        await asyncio.sleep(0.2)
        return before, out.getvalue()

    before, after = asyncio.run(main())
    assert before == "" and after.count("\n") == 10


class Tagged(io.StringIO):
    """A stream that notes in ``order`` when it is written to."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def write(self, text: str) -> int:
        self.order.append("write")
        return super().write(text)


def test_a_due_flush_runs_after_the_callbacks_already_queued_on_uvloop() -> None:
    """uvloop runs due timers before the callbacks queued with ``call_soon``: a flush falling due between a
    request's submit and its batch run would hold that request. The flush is queued behind them instead."""
    order: list[str] = []

    async def main() -> None:
        log = AccessLog("text", Tagged(order), interval=0.001, batch=1000)
        entry(log, "/v2/h")  # arms the flush's timer
        time.sleep(0.01)  # the loop is busy: the timer falls due meanwhile
        asyncio.get_running_loop().call_soon(order.append, "batch run")  # queued by a request just parsed
        for _ in range(100):
            if "write" in order:
                break
            await asyncio.sleep(0.005)

    run_on_uvloop(main)
    assert order == ["batch run", "write"]


def test_a_full_batch_is_written_at_once() -> None:
    out = io.StringIO()
    log = AccessLog("json", out, interval=60, batch=3)
    for _ in range(3):
        entry(log, "/v2/h")
    assert out.getvalue().count("\n") == 3


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_service_log_messages_are_escaped(fmt: str) -> None:
    formatter = TextFormatter() if fmt == "text" else JsonFormatter()
    record = logging.LogRecord("bnserve", logging.INFO, "", 0, "unknown model %r at %s", None, None)
    record.args = ("x", FORGED)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line


def test_uvicorn_access_logger_stays_silent() -> None:
    configure_logging("info", "text")
    access = logging.getLogger("uvicorn.access")
    assert not access.hasHandlers()  # what uvicorn checks before writing its own access lines
