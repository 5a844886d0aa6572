"""Dynamic batching on the event loop: the requests that reach inference together share one onnxruntime run.

A batch-1 request spends more in ``session.run``'s fixed cost (~15 us hot, ~45 us once the server's own work
has pushed the weights out of the caches) than in its row; 16 rows in one run cost about as much as 3 runs of
one (BENCHMARKS.md). Under concurrency the event loop hands the decoded requests of several connections to
:meth:`Batcher.infer` within one loop iteration: the first schedules a flush (``call_soon``, so after every
task already runnable), the others join it, and the flush runs the concatenated rows once and gives each
request its own rows of every output. Nothing waits for a batch to fill: a lone request is flushed in the
next iteration, so batching adds no latency, only the cost of a future (a few microseconds).

Batch Norm is folded into the weights, so a row's outputs do not depend on the other rows of its run: batching
cannot change an answer (``tests/service/test_batching.py`` checks it bit for bit). A request whose rows give
a non-finite output gets its error alone; the rest of the batch is answered. The observers (drift) see each
flush's rows once, with the hidden layers' outputs of the same run.

Large flushes (more than ``offload_rows`` rows) run on the inference threads, so that a big run does not hold
the loop (onnxruntime releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.errors import BadRequest
from service.runtime import ModelRuntime

Results = dict[str, np.ndarray]


#: Told a job's outcome: its own outputs, or the error of its rows (or of the whole run).
Done = Callable[[Results | BaseException], None]


@dataclass
class _Job:
    x: np.ndarray  # (n, F) float32
    hidden: tuple[str, ...]  # hidden outputs the client named
    done: Done  # called once, on the loop, with the outcome
    categorical: np.ndarray | None = None  # (n, K) str, for a model with a ``categorical`` input


class Batcher:
    """Gathers the inferences one event loop asks for in the same iteration into one run per model."""

    def __init__(
        self,
        executor: Executor | None = None,
        offload_rows: int = 256,
        max_rows: int = 4096,
        in_flight: Callable[[], int | None] | None = None,
    ) -> None:
        """``executor``: where flushes of more than ``offload_rows`` rows run (None: on the loop); a flush
        takes at most ``max_rows`` rows (more wait for the next)."""
        # Requests this process is serving (None: unknown): alone (<= 1), a request runs at once.
        self._in_flight = in_flight
        self._executor = executor
        self._offload_rows = offload_rows
        self._max_rows = max_rows
        self._pending: dict[int, tuple[ModelRuntime, list[_Job]]] = {}  # by id(model)
        self._elsewhere: set[asyncio.Future[None]] = set()  # flushes running on the threads (kept referenced)
        self.runs = 0  # session runs made, and rows served through them: the mean batch is rows / runs
        self.rows = 0

    async def infer(
        self,
        model: ModelRuntime,
        x: np.ndarray,
        hidden: Sequence[str] = (),
        categorical: np.ndarray | None = None,
    ) -> Results:
        """``model``'s outputs on rows ``x`` (as :meth:`ModelRuntime.predict`), computed with whatever other
        requests for the same model arrive in this loop iteration; :class:`BadRequest` for this request's own
        non-finite outputs."""
        model.check_rows(x)
        if id(model) not in self._pending and self._in_flight is not None and (self._in_flight() or 2) <= 1:
            # No other request in this process that could join: run now, without the loop iteration (a
            # lone request paid ~30 % of its latency for it at one connection).
            outcome = self._run(model, [_Job(x, tuple(hidden), _ignore, categorical)])[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()

        def done(outcome: Results | BaseException) -> None:
            if future.done():  # its request was cancelled meanwhile (the client left)
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.submit(model, x, hidden, categorical, done)
        return await future

    def submit(
        self,
        model: ModelRuntime,
        x: np.ndarray,
        hidden: Sequence[str],
        categorical: np.ndarray | None,
        done: Done,
    ) -> None:
        """Queue rows ``x`` for ``model``'s run at the end of this loop iteration; ``done`` is called on the loop
        with their outputs or their error. For callers without a task to await in (:mod:`service.wire`); the
        rows must have passed :meth:`ModelRuntime.check_rows`."""
        job = _Job(x, tuple(hidden), done, categorical)
        entry = self._pending.get(id(model))
        if entry is None:
            self._pending[id(model)] = (model, [job])
            asyncio.get_running_loop().call_soon(self._flush, model)
        else:
            entry[1].append(job)

    def _flush(self, model: ModelRuntime) -> None:
        model_jobs = self._pending.pop(id(model), None)
        if model_jobs is None:
            return
        jobs = model_jobs[1]
        while jobs:
            take, rows = 0, 0
            while take < len(jobs) and (take == 0 or rows + len(jobs[take].x) <= self._max_rows):
                rows += len(jobs[take].x)
                take += 1
            batch, jobs = jobs[:take], jobs[take:]
            if self._executor is not None and rows > self._offload_rows:
                task = asyncio.ensure_future(self._run_elsewhere(model, batch))
                self._elsewhere.add(task)
                task.add_done_callback(self._elsewhere.discard)
            else:
                self._answer(batch, self._run(model, batch))

    async def _run_elsewhere(self, model: ModelRuntime, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._executor, self._run, model, batch)
        except BaseException as exc:  # the run itself failed (or was cancelled): every request learns it
            outcome = [exc] * len(batch)
        self._answer(batch, outcome)

    def _run(self, model: ModelRuntime, batch: list[_Job]) -> list[Results | BaseException]:
        """One session run over the batch's rows; each job's own outputs (views) or its error."""
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([job.x for job in batch])  # (N, F)
            s = None  # (N, K), a model with a categorical input only
            if batch[0].categorical is not None:
                s = _join([job.categorical for job in batch if job.categorical is not None])
            layers = model.wants_layers()
            hidden = sorted({name for job in batch for name in job.hidden})
            names = model.run_names(hidden, layers)
            results = dict(zip(names, model.session.run(names, model.feed(x, s))))
        except Exception as exc:
            return [exc] * len(batch)
        self.runs += 1
        self.rows += len(x)
        out: list[Results | BaseException] = []
        served: list[slice] = []
        start = 0
        # One check over the whole batch; each job's own only when some row of it failed.
        suspect = model.first_nonfinite(results, 0, len(x)) is not None
        for job in batch:
            stop = start + len(job.x)
            error: BadRequest | None = model.first_nonfinite(results, start, stop) if suspect else None
            if error is None:
                out.append({name: results[name][start:stop] for name in (*model.output_names, *job.hidden)})
                served.append(slice(start, stop))
            else:
                out.append(error)
            start = stop
        # The observers see the rows that were answered (all of them, but for a rare non-finite request).
        if len(served) == len(batch):
            model.observe(x, results if layers else None, s)
        elif served:
            keep = np.concatenate([np.arange(part.start, part.stop) for part in served])
            model.observe(
                x[keep],
                {n: v[keep] for n, v in results.items()} if layers else None,
                None if s is None else s[keep],
            )
        return out

    @staticmethod
    def _answer(batch: list[_Job], outcome: list[Results | BaseException]) -> None:
        for job, result in zip(batch, outcome, strict=True):
            job.done(result)


def _ignore(outcome: Results | BaseException) -> None:
    """The ``done`` of a job run at once: its caller takes the outcome from the run itself."""


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
