"""Keep inference observers (the drift monitors) off the event loop and off the request's critical path.

Wherever the inference ran (in the inference threads, or on the event loop when ``BNSERVE_INLINE_MAX_BYTES``
is set), its rows are handed to one feeder thread, in arrival order, so that a request only pays for a copy of
its rows. The feeder takes everything that arrived while it was busy in one go and calls each observer once on
the concatenated rows (the drift monitor's update is a closed form over any number of rows, ~50 us whether 1 or
100): under load that is one thread wake-up and one update per burst rather than per request (measured: about
40 us of CPU per batch-1 request when each request updated the monitor itself). The feeder lingers 20 ms
after a wake-up before it takes the rows (less once a quarter of ``max_pending`` batches wait): otherwise it
would grab the GIL each time another thread releases it inside onnxruntime and drain one request at a time;
and each drain takes the GIL from the event loop, so fewer, larger drains cost the serving thread less (5 ms
before; BENCHMARKS.md). Drift statistics have horizons of thousands of rows: 20 ms is no staleness. Readers of
what the observers accumulate call :meth:`ObserverFeeder.flush` first, to see every row served before the read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from service.runtime import LayerObserver, Observer

log = logging.getLogger("bnserve.observers")


class ObserverFeeder:
    """One thread that runs the observers, first in, first out, batching what arrives close together.

    At most ``max_pending`` batches wait; beyond that a batch is skipped by the observers (counted in
    ``skipped_rows``; the first skip is logged) rather than run on the loop or queued without bound.
    """

    def __init__(self, max_pending: int = 1024, linger: float = 0.02) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-observers")
        self._max_pending = max_pending
        self._linger = linger
        self._lock = threading.Lock()
        # (observer, rows, hidden layers' outputs or None, what), in arrival order
        self._pending: list[tuple[Any, Any, Sequence[np.ndarray] | None, str]] = []
        self._draining_scheduled = False
        # Set when a quarter of max_pending waits: the drain stops lingering (a burst must not reach the limit).
        self._crowded = threading.Event()
        self.skipped_rows = 0

    def wrap(self, observe: Observer, what: str, pairs: bool = False) -> Observer:
        """``observe``, run on the feeder thread, whichever thread the inference ran on. ``pairs``: a model with
        a ``categorical`` input, whose observers take ``(x, categorical)``."""

        def fed(x: Any) -> None:
            self._hand_over(observe, x, None, what, pairs)

        return fed

    def wrap_layers(self, observe: LayerObserver, what: str) -> LayerObserver:
        """A layer observer (rows, and the hidden layers' outputs on the rows sampled of them or None), run on
        the feeder thread; it gets each drain's rows, and the layer rows of the batches that had any."""

        def fed(x: np.ndarray, layers: Sequence[np.ndarray] | None) -> None:
            self._hand_over(observe, x, layers, what)

        return fed

    def _hand_over(
        self, observe: Any, x: Any, layers: Sequence[np.ndarray] | None, what: str, pairs: bool = False
    ) -> None:
        # A copy of the rows: the caller's array may be a view of a buffer it reuses once the response is sent.
        # The layers' outputs are the run's own arrays, which nothing writes to.
        rows = (np.array(x[0], copy=True), np.array(x[1], copy=True)) if pairs else np.array(x, copy=True)
        with self._lock:
            if len(self._pending) >= self._max_pending:
                full = True
            else:
                full = False
                self._pending.append((observe, rows, layers, what))
                wake = not self._draining_scheduled
                self._draining_scheduled = True
                if len(self._pending) == self._max_pending // 4:
                    self._crowded.set()
        if full:
            self._skip(len(rows[0]) if pairs else len(x), what)
        elif wake:  # else a drain is queued and will take these rows too
            self._executor.submit(self._drain)

    def _drain(self) -> None:
        """Run every observer once on all of its pending rows, concatenated in arrival order."""
        self._crowded.wait(self._linger)  # let a burst gather (the GIL is free meanwhile)
        with self._lock:
            pending, self._pending = self._pending, []
            self._draining_scheduled = False
            self._crowded.clear()
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


def _join(batches: list[Any]) -> Any:
    """Batches of rows, one after another: arrays, or ``(x, categorical)`` pairs concatenated part by part."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches, strict=True))
    return np.concatenate(batches)
