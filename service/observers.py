"""Run the inference observers (the drift monitors) off the request's critical path, batched.

Wherever the inference ran (on the event loop for the small requests, in the inference threads for the large
ones), its rows are handed to the feeder, in arrival order, so that a request only pays for a copy of its rows.
Every ``linger`` seconds (20 ms) at most, the feeder calls each observer once on the rows that arrived
meanwhile, concatenated: the drift monitor's update is a closed form over any number of rows (~50 us whether
1 or 100), so under load that is one update per burst rather than one per request.

Where a drain runs: **on the event loop** when it holds at most ``loop_rows`` rows (2048; what heavy traffic of
small requests gathers in 20 ms under the default row budgets), else on the feeder's own thread.
- A thread of the serving process is not free: it takes the GIL from the event loop, and every time the loop
  lets go of the GIL (each read, each write) the feeder takes it until its next numpy call lets go in turn: a
  convoy that cost the serving thread more than the observers' own arithmetic. Measured on 2 CPUs, batch 1, 32
  connections, 2 workers: about 10 % more CPU per request with the drains on the thread (BENCHMARKS.md).
- On the loop a drain is one callback of a few hundred microseconds every 20 ms, and no thread wakes.
- A large drain (a burst of big batches) still goes to the thread, so that the loop never stalls for
  milliseconds; large numpy operations release the GIL, so there the thread costs the loop little.
Drains run one at a time, in arrival order, wherever they run.

Drift statistics have horizons of thousands of rows: 20 ms is no staleness. Readers of what the observers
accumulate call :meth:`ObserverFeeder.flush` first, to see every row served before the read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from service.runtime import LayerObserver, Observer
from service.timers import call_later_queued

log = logging.getLogger("bnserve.observers")

# (observer, rows, hidden layers' outputs or None, what)
_Batch = tuple[Any, Any, Sequence[np.ndarray] | None, str]


class ObserverFeeder:
    """Runs the observers, first in, first out, batching what arrives within ``linger`` seconds.

    :meth:`start` gives it the event loop that runs the small drains; before it (or without a loop) every
    drain runs on the feeder's thread. At most ``max_pending`` batches wait; beyond that a batch is skipped by
    the observers (counted in ``skipped_rows``; the first skip is logged) rather than queued without bound.
    """

    def __init__(self, max_pending: int = 1024, linger: float = 0.02, loop_rows: int = 2048) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-observers")
        self._max_pending = max_pending
        self._linger = linger
        self._loop_rows = loop_rows
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _pending, _rows, _scheduled, skipped_rows
        self._pending: list[_Batch] = []  # in arrival order
        self._rows = 0  # rows in _pending, summed over the observers they are for
        self._scheduled = False  # a drain is due (a timer armed, or a thread drain queued)
        # Held while observers run: drains (and flushes) one at a time, each taking everything pending.
        self._draining = threading.Lock()
        self._hurry = threading.Event()  # cuts the thread's linger short (a burst, or the close)
        self._closed = False  # after close(): a late hand-over is observed at once, by its caller
        self.skipped_rows = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the small drains on ``loop`` from now on."""
        self._loop = loop

    def wrap(self, observe: Observer, what: str, pairs: bool = False) -> Observer:
        """``observe``, run by the feeder, whichever thread the inference ran on. ``pairs``: a model with a
        ``categorical`` input, whose observers take ``(x, categorical)``."""

        def fed(x: Any) -> None:
            self._hand_over(observe, x, None, what, pairs)

        return fed

    def wrap_layers(self, observe: LayerObserver, what: str) -> LayerObserver:
        """A layer observer (rows, and the hidden layers' outputs on the rows sampled of them or None), run by
        the feeder; it gets each drain's rows, and the layer rows of the batches that had any."""

        def fed(x: np.ndarray, layers: Sequence[np.ndarray] | None) -> None:
            self._hand_over(observe, x, layers, what)

        return fed

    def _hand_over(
        self, observe: Any, x: Any, layers: Sequence[np.ndarray] | None, what: str, pairs: bool = False
    ) -> None:
        # A copy of the rows: the caller's array may be a view of a buffer it reuses once the response is sent.
        # The layers' outputs are the run's own arrays, which nothing writes to.
        rows = (np.array(x[0], copy=True), np.array(x[1], copy=True)) if pairs else np.array(x, copy=True)
        n = len(rows[0]) if pairs else len(rows)
        with self._lock:
            if len(self._pending) >= self._max_pending:
                full = True
            else:
                full = False
                self._pending.append((observe, rows, layers, what))
                self._rows += n
                schedule = not self._scheduled
                self._scheduled = True
                crowded = len(self._pending) == max(1, self._max_pending // 4)
                closed = self._closed
        if full:
            self._skip(n, what)
        elif closed:  # an inference that ended during the shutdown: nothing would drain its rows later
            self.flush()
        elif schedule:
            self._schedule(self._linger)
        elif crowded:  # a burst must not reach the limit: drain now rather than at the end of the linger
            self._hurry.set()
            self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        loop = self._loop
        if loop is not None:
            try:
                if _running_loop() is loop:
                    call_later_queued(loop, delay, self._drain)
                else:  # an inference thread: the loop arms the timer
                    loop.call_soon_threadsafe(call_later_queued, loop, delay, self._drain)
                return
            except RuntimeError:  # the loop is closed: the thread drains
                pass
        self._to_thread(delay)

    def _to_thread(self, delay: float) -> None:
        try:
            self._executor.submit(self._drain_in_thread, delay)
        except RuntimeError:  # shut down: close() observes what is pending, and later rows at once
            pass

    def _drain(self) -> None:
        """The timer fired (on the loop): observe here if the pending rows are few and no drain is running,
        else on the thread."""
        with self._lock:
            if not self._pending:  # flushed meanwhile
                self._scheduled = False
                return
        if self._draining.acquire(blocking=False):
            try:
                done = self._observe_pending(self._loop_rows)
            finally:
                self._draining.release()
            if done:
                self._again()
                return
        # many rows, or a drain already running on the thread: queue behind it there
        self._to_thread(0.0)

    def _drain_in_thread(self, linger: float) -> None:
        if linger:
            self._hurry.wait(linger)  # let a burst gather (the GIL is free meanwhile)
        if not self._closed:
            self._hurry.clear()
        with self._draining:
            self._observe_pending()
        self._again()

    def _again(self) -> None:
        """After a drain: schedule the next one if rows arrived while it ran, else stand down."""
        with self._lock:
            self._scheduled = bool(self._pending)
            again = self._scheduled
        if again:
            self._schedule(self._linger)

    def _observe_pending(self, max_rows: int | None = None) -> bool:
        """Run every observer once on all of its pending rows, concatenated in arrival order (``_draining``
        held: the batches taken here are the oldest not yet observed). With ``max_rows``, only if at most that
        many rows are pending (checked and taken in one step); returns whether it took them."""
        with self._lock:
            if max_rows is not None and self._rows > max_rows:
                return False
            pending, self._pending, self._rows = self._pending, [], 0
        grouped: dict[int, tuple[Any, list[Any], list[Sequence[np.ndarray]], str]] = {}
        for observe, rows, layers, what in pending:
            group = grouped.setdefault(id(observe), (observe, [], [], what))
            group[1].append(rows)
            if layers is not None:
                group[2].append(layers)
        for observe, batches, layer_batches, what in grouped.values():
            try:
                x = _join(batches)  # (N, F)
                if layer_batches:  # per layer, (N, units)
                    observe(x, [_join(list(z)) for z in zip(*layer_batches, strict=True)])
                else:
                    observe(x)
            except Exception:  # an observer must never take the feeder down
                log.exception("observer of %s failed", what)
        return True

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
        """Observe every batch handed over before this call, here and now, from any thread. It waits for a
        drain in progress (on the loop's thread that blocks the loop as long: the service flushes from worker
        threads)."""
        with self._draining:
            self._observe_pending()

    def close(self) -> None:
        """Observe what is pending, stop the thread; rows handed over later are observed by their caller."""
        with self._lock:
            self._closed = True
        self._hurry.set()
        self._executor.shutdown(wait=True)
        self.flush()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _join(batches: list[Any]) -> Any:
    """Batches of rows, one after another: arrays, or ``(x, categorical)`` pairs concatenated part by part."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches, strict=True))
    return np.concatenate(batches)
