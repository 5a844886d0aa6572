"""bnserve's serving side.

A worker process of the multi-process server imports this package early (to unpickle its app factory), well
before uvicorn installs its signal handlers. A Ctrl-C reaches the whole process group, so until then such a
worker ignores SIGINT: its supervisor stops it with SIGTERM, and it does not die mid-import with a traceback.
uvicorn's handlers replace this once the worker serves. (What runs before this, uvicorn's own import in the
worker, stays exposed: about 0.2 s of its start.)
"""

import signal
import sys

# sys.orig_argv, the interpreter's own command line (python -c ... --multiprocessing-fork for a spawned child):
# sys.argv will not do, a spawned child takes its parent's before it unpickles anything.
if sys.orig_argv[-1:] == ["--multiprocessing-fork"]:  # never the service itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
