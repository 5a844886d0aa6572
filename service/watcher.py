"""Poll mode's loop: re-read the model repository every few seconds, and at once when a file under it changes.

Polling alone is enough and is what guarantees convergence (each pass compares the whole repository with what
is served). File events, from ``watchfiles`` (inotify on Linux; installed with ``uvicorn[standard]``), only
wake the loop early, so a new version is picked up in about the time it takes to load rather than up to a poll
interval later. Without the library, or if the watch cannot be set up (inotify limits, a network file system),
the loop polls, having said so once.

The passes run on one thread of their own: loading a model blocks, and must not occupy the event loop or the
threads that serve inference. With ``--workers N`` every process runs its own loop on the same repository, so
all of them converge to the same set (each within a poll interval plus its load time).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.lifecycle import ModelManager

log = logging.getLogger("bnserve.watcher")


class RepositoryPoller:
    """Runs :meth:`ModelManager.poll` every ``interval`` seconds, earlier on file events when ``file_events``."""

    def __init__(self, manager: ModelManager, interval: float, file_events: bool = True) -> None:
        self.manager = manager
        self.interval = interval
        self.file_events = file_events and importlib.util.find_spec("watchfiles") is not None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnserve-repository")
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0  # completed passes, for tests and the benchmark

    def start(self) -> None:
        """Start the loop (and the file watch) on the running event loop."""
        self._tasks.append(asyncio.create_task(self._poll_forever(), name="bnserve-poller"))
        if self.file_events:
            self._tasks.append(asyncio.create_task(self._watch(self.manager.root), name="bnserve-watch"))

    async def stop(self) -> None:
        """Stop both tasks; a pass that is loading a model finishes first (it runs on its own thread)."""
        self._stop.set()
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def run_once(self) -> None:
        """One pass now, on the poller's thread (what a repository ``load`` in poll mode also waits for)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.manager.poll)
        self.passes += 1

    async def _poll_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                await self.run_once()
            except Exception:  # a pass must never end the loop: the next one may succeed
                log.exception("re-reading the model repository %s failed", self.manager.root)

    async def _watch(self, root: Path) -> None:
        from watchfiles import awatch

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # not a line per burst of file changes
        try:
            # step: quiet time that ends a burst of events; debounce: the longest a burst is held back.
            async for _changes in awatch(
                root, watch_filter=None, debounce=400, step=50, stop_event=self._stop
            ):
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("no file events for %s (%s); re-reading it every %gs", root, exc, self.interval)
