"""How the service runs under uvicorn, in one process or several: options, the app factory, signals, exit codes.

:func:`serve` is what ``python -m service`` runs. Either way uvicorn calls the same :class:`AppFactory` in the
process that serves, after installing its signal handlers: the factory wraps them so that the first SIGTERM
or SIGINT turns readiness off at once (load balancers stop sending) while uvicorn drains the requests in
flight, and a failed start-up is reported in one line, without a traceback.

With ``--workers N`` (N > 1) uvicorn's supervisor runs N processes on one shared socket, each with its own
models and threadpool. Prometheus counters and histograms are aggregated across them (prometheus-client's
multiprocess mode, managed here), and each model's drift statistics live in one file of the same directory that
every worker maps (:class:`~service.drift.DriftMonitor` ``shared``): one report per model, whichever worker
answers. By default there is one worker per CPU the process may use (:func:`service.cpus.available_cpus`).

:func:`uvicorn_options` is public so that ``benchmarks/serve.py`` runs its no-op app under exactly the same
options (event loop, HTTP parser, access log) as the service it is compared with.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from service.connections import BoundedHttpToolsProtocol, ConnectionLimits, connection_cap
from service.logs import configure_logging
from service.metrics import MULTIPROC_ENV, pid_alive
from service.settings import Settings

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def event_loop() -> str:
    """``uvloop`` when installed (it is, with ``uvicorn[standard]``), else asyncio's own loop."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def http_parser() -> str:
    """``httptools`` when installed (a C parser, several times cheaper per request than h11), else ``h11``."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def http_protocol(settings: Settings) -> Any:
    """The HTTP protocol: httptools with the per-connection limits of ``settings``
    (:class:`~service.connections.BoundedHttpToolsProtocol`), or uvicorn's h11 without httptools."""
    if http_parser() != "httptools":
        return "h11"
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=connection_cap(settings.max_connections),
    )
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` (everything but the app) for ``settings``."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": event_loop(),
        "http": http_protocol(settings),
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # h11's own header limit, when it serves
        "ws": "none",  # no websocket routes; skips the upgrade checks
        "log_config": None,
        "log_level": settings.log_level,
        "access_log": False,  # the app writes its own access line, with the request id
        "timeout_graceful_shutdown": settings.graceful_timeout,
        "lifespan": "on",
        "server_header": False,
    }


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status: 0, or 1 when the service cannot start."""
    if settings.workers > 1:
        return _serve_workers(settings)
    import uvicorn

    factory = AppFactory(settings)
    server = uvicorn.Server(uvicorn.Config(factory, factory=True, **uvicorn_options(settings)))
    signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan fails or the port is taken
        if factory.state is not None and factory.state.startup_error is not None:
            return 1
        return int(exc.code) if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down for
        return 0
    return 0


def _ignore(sig: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it shut down for; after a graceful SIGTERM that is a normal exit."""


class AppFactory:
    """What uvicorn calls, in the process that serves (pickled to each worker), to build the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: Any = None  # the ServiceState of the app built in this process

    def __call__(self) -> ASGIApp:
        from service.app import create_app

        configure_logging(self.settings.log_level, self.settings.log_format)
        logging.getLogger("uvicorn.error").addFilter(_not_startup_failed)  # reported in one line instead
        app = create_app(self.settings)
        self.state = app.state.service
        for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn's handlers are installed by now: wrap them
            previous = signal.getsignal(sig)
            if callable(previous):
                signal.signal(sig, _draining_first(self.state.begin_shutdown, previous))
        return QuietStartupFailure(app, self.state)


def _not_startup_failed(record: logging.LogRecord) -> bool:
    return "Application startup failed" not in record.getMessage()


def _draining_first(begin_shutdown: Callable[[], None], handler: Callable[..., Any]) -> Callable[..., Any]:
    """A signal handler that turns readiness off, then calls uvicorn's ``handler``.

    ``begin_shutdown`` is not called from the handler itself but by the event loop, first thing in its next
    iteration: a signal handler runs between two bytecodes of whatever the main thread was doing, which may be
    inside the metrics' lock (prometheus-client's, not reentrant), and setting the readiness gauge there
    deadlocked the process for good (seen under load: a worker that never exited on SIGTERM).
    """

    def handle(sig: int, frame: FrameType | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs yet: nothing else can hold the lock either
            begin_shutdown()
        else:
            loop.call_soon_threadsafe(begin_shutdown)
        handler(sig, frame)

    return handle


class QuietStartupFailure:
    """ASGI wrapper: a failed start-up is reported in one line on stderr, not as uvicorn's traceback."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                if self.state.startup_error is not None:
                    sys.stderr.write(f"bnserve: cannot start: {self.state.startup_error}\n")
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        await self.app(scope, receive, send_quietly)


# ---- several workers ---------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket the workers share, created as TCP explicitly.

    uvicorn's own ``Config.bind_socket`` leaves ``proto`` at 0; accepted sockets inherit it, and asyncio only
    sets ``TCP_NODELAY`` on sockets whose ``proto`` is ``IPPROTO_TCP``, so without uvloop every keep-alive
    response after the first waits ~40 ms for a delayed ACK (Kludex/uvicorn#3149). ``TCP_NODELAY`` is also set
    on the listener, from which Linux copies it to accepted sockets whatever the event loop.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _forget_dead_workers(directory: str, stop: threading.Event) -> None:
    """Drop the live-gauge files of workers that are gone (crashed and restarted, or stopped)."""
    from prometheus_client import multiprocess

    while not stop.wait(1.0):
        for name in os.listdir(directory):
            match = _LIVE_GAUGE_FILE.fullmatch(name)
            if match and not pid_alive(int(match.group(1))):
                multiprocess.mark_process_dead(int(match.group(1)), directory)


def _unloadable(settings: Settings) -> str | None:
    """Why the repository cannot be served (the start-up checks every worker would run), or None."""
    from service.errors import ModelLoadError
    from service.lifecycle import ModelManager

    try:
        ModelManager(settings.model_repository, "none", settings.intra_op_threads).start()
    except ModelLoadError as exc:
        return str(exc)
    return None


def _serve_workers(settings: Settings) -> int:
    """Serve with ``settings.workers`` processes sharing one socket; metrics aggregated across them.

    prometheus-client's multiprocess mode: a fresh metrics directory for this start (removed on exit), set in
    the environment the workers inherit (prometheus-client reads it when a worker imports it); counters and
    histograms add up over every worker that ever ran, gauges follow their ``multiprocess_mode`` over the
    live workers only.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    problem = _unloadable(settings)
    if problem is not None:  # once here, rather than once per worker
        sys.stderr.write(f"bnserve: cannot start: {problem}\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="bnserve-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        stop = threading.Event()
        janitor = threading.Thread(target=_forget_dead_workers, args=(directory, stop), daemon=True)
        try:
            config = uvicorn.Config(
                AppFactory(settings), factory=True, workers=settings.workers, **uvicorn_options(settings)
            )
            try:
                sock = bind_socket(settings.host, settings.port)
            except OSError as exc:
                sys.stderr.write(
                    f"bnserve: cannot listen on {settings.host}:{settings.port}: {exc.strerror}\n"
                )
                return 1
            janitor.start()
            with sock:
                supervisor = Multiprocess(config, sockets=[sock])
                supervisor.run()
            failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
            return 1 if failed else 0
        except KeyboardInterrupt:
            return 0
        finally:
            stop.set()
            os.environ.pop(MULTIPROC_ENV, None)
