"""The event loop lets other tasks have its CPU when it has worked for a while without a pause.

A worker under load never blocks: every loop iteration finds requests ready, so its thread runs on and on.
Linux's scheduler (EEVDF) lets a running task finish its time slice before a task woken on the same CPU gets
it, and then switches at the next scheduler tick (every 4 ms at ``CONFIG_HZ=250``). A task that shares the
worker's CPU and needs a few microseconds at a time, such as a sidecar proxy or a load generator on the same
cores, therefore waits milliseconds, and the requests it carries wait with it: at batch 1 and 8 connections,
with wrk on the server's two cores, that wait was the p99 (BENCHMARKS.md, "Where the batch-1 tail comes from").

:class:`LoopYielder` watches the loop's thread from a timer on the loop: when a tick finds that the thread has
not blocked since the previous one (its count of voluntary context switches, ``getrusage(RUSAGE_THREAD)``, did
not move), the loop has worked ``period`` seconds without a pause, and the tick calls ``sched_yield()``. A task
waiting for the CPU runs now; with none waiting, the call returns at once (about a microsecond). A loop that
pauses on its own is never made to yield. After ``quiet_ticks`` ticks in a row that each found a pause, the
timer slows to ``quiet_period`` (an idle server wakes for it 10 times a second), and speeds up again at the first
tick that finds none.

Linux only (``RUSAGE_THREAD``); elsewhere :meth:`LoopYielder.start` does nothing.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable

_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)


def voluntary_switches() -> int:
    """How many times the calling thread has blocked (given up its CPU waiting for something)."""
    assert _RUSAGE_THREAD is not None
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class LoopYielder:
    """Yields the loop's CPU after ``period`` seconds of work without a pause (see the module docstring)."""

    def __init__(
        self,
        period: float,
        quiet_period: float = 0.1,
        quiet_ticks: int = 50,
        yield_cpu: Callable[[], None] = os.sched_yield,
        switches: Callable[[], int] = voluntary_switches,
    ) -> None:
        self.period = period
        self.quiet_period = quiet_period
        self.quiet_ticks = quiet_ticks
        self._yield_cpu = yield_cpu
        self._switches = switches
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seen = 0  # the thread's voluntary switches at the last tick
        self._paused = 0  # ticks in a row that found a pause
        self.ticks = 0
        self.yields = 0

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop``, from its own thread (call this on it). A no-op when the period is 0 or off Linux."""
        if self.period <= 0 or _RUSAGE_THREAD is None or self._timer is not None:
            return
        self._loop = loop
        self._seen = self._switches()
        self._timer = loop.call_later(self.period, loop.call_soon, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a tick already queued finds the timer gone and does nothing
            self._timer = None

    def _tick(self) -> None:
        if self._timer is None or self._loop is None:
            return
        self.ticks += 1
        seen = self._switches()
        if seen == self._seen:  # no pause for a whole period: let a waiting task have the CPU
            self._yield_cpu()
            self.yields += 1
            self._paused = 0
        else:
            self._paused += 1
        self._seen = self._switches()
        quiet = self._paused >= self.quiet_ticks
        # Due, the tick queues behind the callbacks already queued (uvloop runs due timers first): the
        # responses they write are out before the CPU is given away.
        self._timer = self._loop.call_later(
            self.quiet_period if quiet else self.period, self._loop.call_soon, self._tick
        )
