"""How the service runs under uvicorn: the server options, shared by ``python -m service`` and the benchmark.

Kept apart from ``__main__`` so that ``benchmarks/serve.py`` can run its no-op app under exactly the same
options (event loop, HTTP parser, access log, keep-alive) as the service it is compared with.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from service.settings import Settings


def event_loop() -> str:
    """``uvloop`` when installed (it is, with ``uvicorn[standard]``), else asyncio's own loop."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def http_parser() -> str:
    """``httptools`` when installed (a C parser, several times cheaper per request than h11), else ``h11``."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` (everything but the app) for ``settings``."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": event_loop(),
        "http": http_parser(),
        "ws": "none",  # no websocket routes; skips the upgrade checks
        "log_config": None,
        "log_level": settings.log_level,
        "access_log": False,  # the app writes its own access line, with the request id
        "timeout_graceful_shutdown": settings.graceful_timeout,
        "lifespan": "on",
        "server_header": False,
    }
