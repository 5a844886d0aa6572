"""The loop yields its CPU after a stretch of work without a pause, never when it pauses on its own."""

from __future__ import annotations

import asyncio
import functools
import sys
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.yielder import LoopYielder, voluntary_switches
from tests.service.conftest import Repo, settings_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RUSAGE_THREAD is Linux's")


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def busy(seconds: float) -> None:
    """Work on the loop in short callbacks for ``seconds``, never blocking: as a loaded worker does."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    end = time.perf_counter() + seconds

    def step() -> None:
        spin = time.perf_counter() + 0.0001
        while time.perf_counter() < spin:
            pass
        if time.perf_counter() < end:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done


def test_the_switch_count_moves_when_the_thread_blocks_and_not_while_it_computes() -> None:
    before = voluntary_switches()
    sum(range(200_000))
    assert voluntary_switches() == before
    time.sleep(0.002)
    assert voluntary_switches() > before


def test_a_loop_that_never_pauses_yields_about_once_a_period() -> None:
    async def main() -> tuple[int, int]:
        recorder = Recorder()
        yielder = LoopYielder(0.002, yield_cpu=recorder)
        yielder.start(asyncio.get_running_loop())
        await busy(0.06)
        yielder.stop()
        return recorder.calls, yielder.ticks

    calls, ticks = asyncio.run(main())
    assert calls >= 5, f"{calls} yields in 60 ms of work at a 2 ms period"
    assert calls <= ticks <= 31  # at most one tick per period, one yield per tick


def test_a_tick_yields_only_when_the_thread_has_not_paused_since_the_last_one() -> None:
    """The decision alone, ticked by hand: a loop that pauses on its own is never made to yield."""
    switches, cpu = [0], [0.0]
    recorder = Recorder()
    loop = asyncio.new_event_loop()  # not run: the test makes the ticks itself
    try:
        yielder = LoopYielder(
            0.002, yield_cpu=recorder, switches=lambda: switches[0], cpu_time=lambda: cpu[0]
        )
        yielder.start(loop)
        tick = functools.partial(yielder._tick, yielder._generation)
        made = []
        for paused in (True, False, True, True, False, False, True):
            switches[0] += paused  # the thread blocked (waited in epoll, say) since the last tick
            cpu[0] += 0.001
            tick()
            made.append(recorder.calls)
        yielder.stop()
    finally:
        loop.close()
    assert made == [0, 1, 1, 1, 2, 3, 3]


def test_a_loop_that_pauses_on_its_own_never_yields() -> None:
    """Light traffic on a real loop: a little work, then the loop waits in epoll (a real pause)."""

    async def main() -> tuple[int, int]:
        recorder = Recorder()
        yielder = LoopYielder(0.002, yield_cpu=recorder)
        yielder.start(asyncio.get_running_loop())
        for _ in range(20):
            await busy(0.0002)
            await asyncio.sleep(0.001)
        yielder.stop()
        return recorder.calls, yielder.ticks

    calls, ticks = asyncio.run(main())
    assert ticks >= 5
    assert calls <= 1  # 0 unless the scheduler held the loop off its CPU for a whole period


def test_a_busy_loop_that_started_idle_yields_between_short_pauses() -> None:
    """Work in 10 ms stretches with a 1 ms pause between them, after an idle start that slowed the ticks: the
    stretches still yield."""
    pauses = [0]

    async def main() -> tuple[int, int]:
        recorder = Recorder()
        yielder = LoopYielder(
            0.002, quiet_period=0.05, quiet_ticks=3, yield_cpu=recorder, switches=lambda: pauses[0]
        )
        yielder.start(asyncio.get_running_loop())
        await asyncio.sleep(0.1)  # idle: the ticks slow down
        quiet_ticks = yielder.ticks
        for _ in range(30):
            await busy(0.01)
            pauses[0] += 1
            await asyncio.sleep(0.001)
        yielder.stop()
        return recorder.calls, quiet_ticks

    calls, quiet_ticks = asyncio.run(main())
    assert quiet_ticks <= 6  # 3 fast ticks, then one every 50 ms
    assert calls >= 30, f"{calls} yields in 300 ms of work in 10 ms stretches"


def test_an_idle_loop_slows_its_ticks_and_work_speeds_them_up_again() -> None:
    async def main() -> tuple[int, int, int]:
        recorder = Recorder()
        yielder = LoopYielder(0.002, quiet_period=0.05, quiet_ticks=3, yield_cpu=recorder)
        yielder.start(asyncio.get_running_loop())
        await asyncio.sleep(0.3)  # idle: 3 fast ticks, then one every 50 ms
        idle_ticks = yielder.ticks
        await busy(0.15)  # the first slow tick that finds no pause yields, and the fast ticks resume
        yielder.stop()
        return idle_ticks, yielder.ticks - idle_ticks, recorder.calls

    idle_ticks, busy_ticks, calls = asyncio.run(main())
    assert 3 <= idle_ticks <= 12, f"{idle_ticks} ticks in 300 ms idle"
    assert busy_ticks >= 10, f"{busy_ticks} ticks in 150 ms of work"
    assert calls >= 5


def test_a_tick_queued_before_a_stop_does_nothing_even_after_a_restart() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        yielder = LoopYielder(0.001, quiet_period=0.001)
        yielder.start(loop)
        stale = yielder._generation  # what a tick queued by this start carries
        yielder.stop()
        yielder.start(loop)  # a new chain of ticks
        before = yielder.ticks
        yielder._tick(stale)  # the old chain's queued tick runs now
        stale_ticks = yielder.ticks - before
        await asyncio.sleep(0.05)
        yielder.stop()
        return stale_ticks, yielder.ticks

    stale_ticks, ticks = asyncio.run(main())
    assert stale_ticks == 0
    assert ticks <= 51  # one chain: at most a tick per millisecond


def test_a_zero_period_turns_it_off() -> None:
    async def main() -> bool:
        yielder = LoopYielder(0.0)
        yielder.start(asyncio.get_running_loop())
        return yielder.running

    assert asyncio.run(main()) is False


@pytest.mark.parametrize(("setting", "runs"), [(2.0, True), (0.0, False)])
def test_the_service_runs_it_as_set_and_stops_it_at_shutdown(repo: Repo, setting: float, runs: bool) -> None:
    with TestClient(create_app(settings_for(repo.root, cpu_yield_ms=setting))) as c:
        yielder = c.app.state.service.yielder  # type: ignore[attr-defined]
        assert yielder.running is runs
        if runs:
            assert yielder.period == pytest.approx(0.002)
    assert yielder.running is False
