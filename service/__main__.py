"""``python -m service``: validate the settings, then serve the model repository with uvicorn.

Exit codes: 0 after a normal or SIGTERM shutdown, 1 when a model cannot be loaded, 2 for a bad setting.
Problems are reported in one line on stderr, without a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.server import QuietStartupFailure, serve_workers, uvicorn_options
from service.settings import SettingsError, load_settings
from service.state import ServiceState


class _Server(uvicorn.Server):
    """uvicorn's server, which also turns readiness off the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service_state.begin_shutdown()
        super().handle_exit(sig, frame)


def _drop_startup_failed(record: logging.LogRecord) -> bool:
    return "Application startup failed" not in record.getMessage()


def _ignore(sig: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it shut down for; after a graceful SIGTERM that is a normal exit."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; returns the process exit code."""
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        sys.stderr.write(f"bnserve: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("uvicorn.error").addFilter(_drop_startup_failed)
    if settings.workers > 1:
        try:
            return serve_workers(settings)
        except KeyboardInterrupt:
            return 0
    app = create_app(settings)
    state: ServiceState = app.state.service
    config = uvicorn.Config(QuietStartupFailure(app), **uvicorn_options(settings))
    server = _Server(config, state)
    signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan fails
        if state.startup_error is not None:
            sys.stderr.write(f"bnserve: cannot start: {state.startup_error}\n")
            return 1
        return int(exc.code) if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
