"""``python -m service``: validate the settings, then serve the model repository with uvicorn.

Exit codes: 0 after a normal or SIGTERM shutdown, 1 when the service cannot start (a model cannot be loaded,
the port is taken), 2 for a bad setting, 130 for a SIGINT (Ctrl-C) before the server was up. Problems are
reported in one line on stderr, without a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import MutableMapping, Sequence
from types import FrameType


def _exit_now(sig: int, frame: FrameType | None) -> None:
    """SIGINT while the modules import: leave at once. Raising here would not do: inside a C extension's
    initialisation (onnxruntime's) the exception comes back as an ImportError with a traceback. Nothing is
    open yet that needs cleaning up."""
    os._exit(130)


_SIGINT_AFTER_SERVING: list[bool] = []


def _interrupted(sig: int, frame: FrameType | None) -> None:
    """SIGINT while the settings load or the server starts: exit quietly (uvicorn handles it later on).

    uvicorn re-raises the Ctrl-C it handled once it has shut down, still inside its event loop: raising there
    would cancel the lifespan's clean-up midway (a traceback), so that one is only noted, and ``main``
    returns 130 after the clean shutdown."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise SystemExit(130) from None
    _SIGINT_AFTER_SERVING.append(True)


#: numpy's BLAS (OpenBLAS) runs one thread per core by default, and its threads spin while they wait for
#: work. In a server that already runs a worker per core, the drift monitors' small matrix-vector products then
#: cost several times their CPU (7x at 512 rows on 2 cores, BENCHMARKS.md). One thread each, unless the
#: operator says otherwise; set before numpy is first imported, and inherited by the worker processes.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread(environ: MutableMapping[str, str]) -> None:
    """One BLAS thread per process in ``environ``, where the operator has not chosen a number."""
    for name in BLAS_THREADS:
        environ.setdefault(name, "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; returns the process exit code."""
    signal.signal(signal.SIGINT, _exit_now)
    one_blas_thread(os.environ)
    # Imported here, after the handler: importing uvicorn, FastAPI and onnxruntime takes a while.
    from service.logs import configure_logging
    from service.server import serve
    from service.settings import SettingsError, load_settings

    signal.signal(signal.SIGINT, _interrupted)

    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        sys.stderr.write(f"bnserve: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    code = serve(settings)
    return 130 if _SIGINT_AFTER_SERVING else code


if __name__ == "__main__":
    sys.exit(main())
