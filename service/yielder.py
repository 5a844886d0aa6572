"""The event loop lets other tasks have its CPU when it has worked for a while without a pause.

A worker under load never blocks: every loop iteration finds requests ready, so its thread runs on and on.
Linux's scheduler (EEVDF) lets a running task finish its time slice before a task woken on the same CPU gets
it, and then switches at the next scheduler tick (every 4 ms at ``CONFIG_HZ=250``). A task that shares the
worker's CPU and needs a few microseconds at a time, such as a sidecar proxy or a load generator on the same
cores, therefore waits milliseconds, and the requests it carries wait with it: at batch 1 and 8 connections,
with wrk on the server's two cores, that wait was the p99 (BENCHMARKS.md, "the event loop yields its CPU").

:class:`LoopYielder` watches the loop's thread from a timer on the loop: when a tick finds that the thread has
not blocked since the previous one (its count of voluntary context switches, ``getrusage(RUSAGE_THREAD)``, did
not move), the loop has worked about ``period`` seconds without a pause, and the tick calls ``sched_yield()``.
A task waiting for the CPU runs now; with none waiting, the call returns at once (about a microsecond). A loop
that pauses on its own is never made to yield. Ticks run between the loop's callbacks, queued behind those
already waiting (:func:`service.timers.call_later_queued`), so a single long callback delays the next yield.

An idle loop does not need a tick every ``period``: after ``quiet_ticks`` ticks in a row in which the thread
used less than a tenth of the time on the CPU (``time.thread_time``), the timer slows to ``quiet_period`` (an
idle server wakes for it 10 times a second), and the first tick that finds more work brings it back.

Linux only (``RUSAGE_THREAD``); elsewhere :meth:`LoopYielder.start` does nothing.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable

from service.timers import call_later_queued

_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)

#: A tick in which the thread was on the CPU for less than this share of the time counts as idle.
IDLE_SHARE = 0.1


def voluntary_switches() -> int:
    """How many times the calling thread has blocked (given up its CPU waiting for something). Linux only."""
    if _RUSAGE_THREAD is None:
        raise OSError("per-thread resource usage (RUSAGE_THREAD) is Linux's")
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
        cpu_time: Callable[[], float] = time.thread_time,
    ) -> None:
        self.period = period
        self.quiet_period = quiet_period
        self.quiet_ticks = quiet_ticks
        self._yield_cpu = yield_cpu
        self._switches = switches
        self._cpu_time = cpu_time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._generation = 0  # a tick of an earlier start (queued when it stopped) finds it changed
        self._seen = 0  # the thread's voluntary switches at the last tick
        self._cpu = 0.0  # the thread's CPU time at the last tick
        self._at = 0.0  # the loop's time at the last tick
        self._idle = 0  # ticks in a row that found the thread mostly off the CPU
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
        self._generation += 1
        self._seen, self._cpu, self._at, self._idle = self._switches(), self._cpu_time(), loop.time(), 0
        self._timer = call_later_queued(loop, self.period, self._tick, self._generation)

    def stop(self) -> None:
        """Stop watching; a tick already queued finds the generation changed and does nothing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._generation += 1

    def _tick(self, generation: int) -> None:
        loop = self._loop
        if generation != self._generation or loop is None:
            return
        self.ticks += 1
        seen, cpu, now = self._switches(), self._cpu_time(), loop.time()
        if seen == self._seen:  # no pause since the last tick: let a waiting task have the CPU
            self._yield_cpu()
            self.yields += 1  # a yield is an involuntary switch: it does not move the count
        busy = cpu - self._cpu >= IDLE_SHARE * max(now - self._at, 1e-9)
        self._idle = 0 if busy else self._idle + 1
        self._seen, self._cpu, self._at = seen, cpu, now
        delay = self.quiet_period if self._idle >= self.quiet_ticks else self.period
        self._timer = call_later_queued(loop, delay, self._tick, generation)
