"""Keep inference observers (the drift monitors) off the event loop, wherever the inference itself ran.

Large requests are predicted in the threadpool, and their observers run there, inline. Small requests may be
predicted on the event loop itself (``INLINE_MAX_BYTES`` in ``app.py``); their observers are then handed to
one feeder thread, in arrival order, so that the loop only pays for a copy of the rows. Readers of what the
observers accumulate call :meth:`ObserverFeeder.flush` first, to see every row served before the read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.runtime import Observer

log = logging.getLogger("bnserve.observers")


def on_event_loop() -> bool:
    """Whether the calling thread is running an asyncio event loop (uvloop included)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ObserverFeeder:
    """One thread that runs the observers called from the event loop, first in, first out.

    At most ``max_pending`` batches wait; beyond that a batch is skipped by the observers (counted in
    ``skipped_rows``; the first skip is logged) rather than run on the loop or queued without bound.
    """

    def __init__(self, max_pending: int = 1024) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-observers")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self.skipped_rows = 0

    def wrap(self, observe: Observer, what: str) -> Observer:
        """``observe``, run inline on worker threads and on the feeder when called from the event loop."""

        def fed(x: np.ndarray) -> None:
            if not on_event_loop():
                observe(x)  # already in the threadpool; the runtime logs a failure
                return
            if not self._slots.acquire(blocking=False):
                self._skip(len(x), what)
                return
            # A copy: the caller's array may be a view of a buffer it reuses once the response is sent.
            self._executor.submit(self._run, observe, np.array(x, copy=True), what)

        return fed

    def _run(self, observe: Observer, x: np.ndarray, what: str) -> None:
        try:
            observe(x)
        except Exception:  # an observer must never take the feeder down
            log.exception("observer of %s failed", what)
        finally:
            self._slots.release()

    def _skip(self, rows: int, what: str) -> None:
        with self._lock:
            first = self.skipped_rows == 0
            self.skipped_rows += rows
        if first:
            log.warning(
                "observers are behind: %d rows of %s skipped by the drift statistics (further skips are "
                "counted, not logged)",
                rows,
                what,
            )

    def flush(self) -> None:
        """Wait until every batch handed over before this call has been observed (not from the event loop)."""
        self._executor.submit(lambda: None).result()

    def close(self) -> None:
        """Observe what is pending, then stop the thread."""
        self._executor.shutdown(wait=True)
