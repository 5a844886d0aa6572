"""``service.observers.ObserverFeeder``: batched, in arrival order, small drains on the loop and large ones on its
thread, nothing lost or run twice, whichever thread hands the rows over or reads.

Each test runs a real asyncio loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.observers import ObserverFeeder
from tests.service.conftest import run_on_uvloop


class Recorder:
    """An observer that keeps every call's rows and the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, int]] = []

    def __call__(self, x: np.ndarray) -> None:
        self.calls.append((np.array(x), threading.get_ident()))

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate([x for x, _ in self.calls]) if self.calls else np.empty((0, 2))


def batches(sizes: list[int]) -> list[np.ndarray]:
    """Consecutive row numbers, so that the order they are observed in can be read back: (n, 2) each."""
    out, start = [], 0
    for n in sizes:
        out.append(np.arange(start, start + n, dtype=np.float64).repeat(2).reshape(n, 2))
        start += n
    return out


def on_this_loop(**options: float) -> tuple[ObserverFeeder, Recorder, Callable[[np.ndarray], None]]:
    """A feeder draining on the running loop, a recorder, and the recorder as the feeder wraps it."""
    feeder = ObserverFeeder(**options)  # type: ignore[arg-type]
    feeder.start(asyncio.get_running_loop())
    recorder = Recorder()
    return feeder, recorder, feeder.wrap(recorder, "m/1")


async def wait_for(done: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the feeder never drained"
        await asyncio.sleep(0.005)


def test_small_drains_run_on_the_loop_once_per_linger_in_arrival_order() -> None:
    async def main() -> tuple[Recorder, int]:
        feeder, recorder, fed = on_this_loop(linger=0.05)
        for x in batches([1, 3, 2, 1]):
            fed(x)
            x[:] = -1  # the caller reuses its buffer once the response is sent: the feeder copied the rows
        assert recorder.calls == []  # nothing runs inside the hand-over
        await wait_for(lambda: len(recorder.rows) == 7)
        feeder.close()
        return recorder, threading.get_ident()

    recorder, loop_thread = asyncio.run(main())
    assert len(recorder.calls) == 1  # the four batches arrived within the linger: one call
    assert recorder.calls[0][1] == loop_thread
    np.testing.assert_array_equal(recorder.rows[:, 0], np.arange(7))


def test_a_drain_over_loop_rows_runs_on_the_feeders_thread_and_order_holds_across_both() -> None:
    async def main() -> tuple[Recorder, int]:
        feeder, recorder, fed = on_this_loop(linger=0.01, loop_rows=100)
        sizes = [5, 300, 4, 250, 1]
        *singles, large, small = batches([*sizes, 200, 3])
        seen = 0
        for x in singles:  # one drain per batch
            fed(x)
            seen += len(x)
            await wait_for(lambda: len(recorder.rows) == seen)  # noqa: B023
        # and a burst: a large batch then small ones, handed over before any drain
        fed(large)
        fed(small)
        await wait_for(lambda: len(recorder.rows) == 763)
        feeder.close()
        return recorder, threading.get_ident()

    recorder, loop_thread = asyncio.run(main())
    np.testing.assert_array_equal(recorder.rows[:, 0], np.arange(763))  # every row once, in arrival order
    on_loop = [len(x) for x, thread in recorder.calls if thread == loop_thread]
    on_thread = [len(x) for x, thread in recorder.calls if thread != loop_thread]
    assert on_loop[:3] == [5, 4, 1] and on_thread[:2] == [300, 250]
    assert max(on_loop) <= 100 and min(on_thread) > 100


def test_rows_from_an_inference_thread_are_drained_by_the_loop() -> None:
    async def main() -> tuple[Recorder, int]:
        feeder, recorder, fed = on_this_loop(linger=0.01)
        await asyncio.to_thread(fed, batches([3])[0])
        await wait_for(lambda: len(recorder.rows) == 3)
        feeder.close()
        return recorder, threading.get_ident()

    recorder, loop_thread = asyncio.run(main())
    assert [thread for _, thread in recorder.calls] == [loop_thread]


def test_flush_from_another_thread_observes_everything_handed_over_before_it() -> None:
    async def main() -> tuple[Recorder, int]:
        feeder, recorder, fed = on_this_loop(linger=60.0)  # no timer would fire during the test
        for x in batches([2, 2]):
            fed(x)
        await asyncio.to_thread(feeder.flush)
        seen = len(recorder.rows)
        feeder.close()
        return recorder, seen

    recorder, seen = asyncio.run(main())
    assert seen == 4 and len(recorder.calls) == 1


def test_without_a_loop_the_thread_drains_and_close_observes_the_rest() -> None:
    feeder = ObserverFeeder(linger=60.0)
    recorder = Recorder()
    fed = feeder.wrap(recorder, "m/1")
    for x in batches([1, 2]):
        fed(x)
    assert recorder.calls == []  # the thread lingers
    feeder.flush()
    assert len(recorder.rows) == 3
    fed(batches([4])[0])
    feeder.close()
    np.testing.assert_array_equal(recorder.rows[:, 0], [0, 1, 2, 0, 1, 2, 3])


def test_beyond_max_pending_batches_are_skipped_and_counted() -> None:
    async def main() -> tuple[Recorder, int]:
        feeder, recorder, fed = on_this_loop(max_pending=8, linger=60.0)
        for x in batches(
            [1] * 12
        ):  # a quarter of max_pending (2) arms an immediate drain; the loop is busy here
            fed(x)
        skipped = feeder.skipped_rows
        await wait_for(lambda: len(recorder.rows) == 8)
        feeder.close()
        return recorder, skipped

    recorder, skipped = asyncio.run(main())
    assert skipped == 4
    np.testing.assert_array_equal(recorder.rows[:, 0], np.arange(8))


def test_a_failing_observer_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> Recorder:
        feeder = ObserverFeeder(linger=0.01)
        feeder.start(asyncio.get_running_loop())
        recorder = Recorder()

        def broken(x: np.ndarray) -> None:
            raise ValueError("boom")

        feeder.wrap(broken, "bad/1")(batches([2])[0])
        feeder.wrap(recorder, "good/1")(batches([3])[0])
        await wait_for(lambda: len(recorder.rows) == 3)
        feeder.close()
        return recorder

    recorder = asyncio.run(main())
    assert len(recorder.rows) == 3
    assert "observer of bad/1 failed" in caplog.text


def test_rows_handed_over_after_close_are_observed_by_their_caller() -> None:
    async def main() -> Recorder:
        feeder, recorder, fed = on_this_loop(linger=0.01)
        first, late = batches([2, 3])
        fed(first)
        await asyncio.to_thread(feeder.close)  # as the service's shutdown calls it
        await asyncio.to_thread(fed, late)  # an inference that ended during the shutdown
        return recorder

    recorder = asyncio.run(main())
    np.testing.assert_array_equal(recorder.rows[:, 0], np.arange(5))


def test_a_hand_over_after_its_loop_closed_raises_nothing_and_is_observed_at_close() -> None:
    feeder = ObserverFeeder(linger=0.01)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    feeder.start(loop)
    loop.close()
    recorder = Recorder()
    feeder.wrap(recorder, "m/1")(batches([4])[0])  # same thread as the loop's, which no longer runs
    feeder.close()
    assert len(recorder.rows) == 4


def test_a_due_drain_runs_after_the_callbacks_already_queued_on_uvloop() -> None:
    """uvloop runs due timers before the callbacks queued with ``call_soon``: a drain falling due between a
    request's submit and its batch flush (a ``call_soon``) would hold that request for the whole drain. The
    drain is queued behind them instead."""
    order: list[str] = []

    async def main() -> None:
        feeder = ObserverFeeder(linger=0.001)
        feeder.start(asyncio.get_running_loop())
        fed = feeder.wrap(lambda x: order.append("drain"), "m/1")
        fed(batches([3])[0])  # arms the drain's timer
        time.sleep(0.01)  # the loop is busy: the timer falls due meanwhile
        asyncio.get_running_loop().call_soon(order.append, "flush")  # a batch flush a request just queued
        await wait_for(lambda: "drain" in order)
        feeder.close()

    run_on_uvloop(main)
    assert order == ["flush", "drain"]
