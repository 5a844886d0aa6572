"""``python -m service``: validate the settings, then serve the model repository with uvicorn.

Exit codes: 0 after a normal or SIGTERM shutdown, 1 when the service cannot start (a model cannot be loaded,
the port is taken), 2 for a bad setting, 130 for a SIGINT (Ctrl-C) before the server was up. Problems are
reported in one line on stderr, without a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType


def _interrupted(sig: int, frame: FrameType | None) -> None:
    """SIGINT while the modules import or the settings load: exit quietly (uvicorn handles it later on)."""
    raise SystemExit(130)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; returns the process exit code."""
    signal.signal(signal.SIGINT, _interrupted)
    # Imported here, after the handler: importing uvicorn, FastAPI and onnxruntime takes a while.
    from service.logs import configure_logging
    from service.server import serve
    from service.settings import SettingsError, load_settings

    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        sys.stderr.write(f"bnserve: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
