"""bnserve's serving side.

A worker process of the multi-process server imports this package early (to unpickle its app factory), well
before uvicorn installs its signal handlers. A Ctrl-C reaches the whole process group, so until then such a
worker ignores SIGINT: its supervisor stops it with SIGTERM, and it does not die mid-import with a traceback.
uvicorn's handlers replace this once the worker serves. (What runs before this, uvicorn's own import in the
worker, stays exposed: under a second of a start-up.)
"""

import signal
import sys
from multiprocessing import spawn

if spawn.is_forking(
    sys.argv
):  # a spawned child (python -c ... --multiprocessing-fork), never the service itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
