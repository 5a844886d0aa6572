"""What every request shares: the settings, the loaded models and their drift monitors, readiness, metrics.

:meth:`ServiceState.start` and :meth:`ServiceState.stop` are the body of the app's lifespan: models load
there, never at import time. No HTTP here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from contract import package_version
from service import connections
from service.accesslog import AccessLog
from service.cells import count_cells
from service.dataplane import Limits, Offload
from service.drift import DriftMonitor
from service.errors import ModelLoadError, NotFound, NotReady
from service.hidden_drift import ModelDriftMonitor, RowBudget
from service.lifecycle import Hooks, ModelManager
from service.metrics import Metrics
from service.observers import ObserverFeeder
from service.repository import ModelRepository
from service.runtime import ModelRuntime, Observer
from service.sample import Reservoir
from service.settings import Settings
from service.tabular import Tabular
from service.tracing import Tracing
from service.watcher import RepositoryPoller
from service.yielder import LoopYielder

log = logging.getLogger("bnserve")

#: Called once per loaded model; returns further observers fed the float32 rows of each successful inference.
ObserversFor = Callable[[ModelRuntime], list[Observer]]


@dataclass
class ServiceState:
    """Settings, the loaded models, their drift monitors, where inference runs, readiness, metrics."""

    settings: Settings
    metrics: Metrics = field(init=False)
    limits: Limits = field(init=False)
    manager: ModelManager | None = None  # set once the start-up load succeeded
    poller: RepositoryPoller | None = None  # poll mode only
    drift: dict[tuple[str, int], DriftMonitor] = field(default_factory=dict)  # by (name, version)
    samples: dict[tuple[str, int], Reservoir] = field(default_factory=dict)  # by (name, version), opt-in
    feeder: ObserverFeeder | None = None  # runs the observers, batched, off the requests' path
    access_log: AccessLog | None = field(init=False)  # None when the access log is off
    offload: Offload | None = None  # runs the blocking part of inference requests
    draining: bool = False
    startup_error: str | None = None
    version: str = field(default_factory=package_version)
    tracing: Tracing | None = None  # request spans, when the OTEL_* variables ask for them
    yielder: LoopYielder | None = None  # lets a waiting task have the loop's CPU (service/yielder.py)

    def __post_init__(self) -> None:
        self.metrics = Metrics(workers=self.settings.workers)
        # Access lines are INFO events: none below that level, as with any other INFO line.
        writes = self.settings.access_log and self.settings.log_level in ("info", "debug")
        self.access_log = AccessLog(self.settings.log_format) if writes else None
        self.limits = Limits(self.settings.max_body_bytes, self.settings.max_batch_rows)

    @property
    def repository(self) -> ModelRepository | None:
        """The versions served right now: a snapshot that a swap replaces, never changes."""
        return self.manager.repository if self.manager is not None else None

    @property
    def ready(self) -> bool:
        return self.repository is not None and not self.draining

    def begin_shutdown(self) -> None:
        """Readiness goes false (load balancers stop sending); requests already here still complete."""
        self.draining = True
        self.metrics.ready.set(0)

    def models(self) -> ModelRepository:
        if self.repository is None:
            raise NotReady("the models are not loaded yet")
        return self.repository

    def drift_monitor(self, model: ModelRuntime) -> DriftMonitor:
        """The drift monitor of a loaded model, up to date; :class:`NotFound` when monitoring is off."""
        monitor = self.drift.get((model.name, model.version))
        if monitor is None:
            raise NotFound("drift monitoring is off (BNSERVE_DRIFT_ENABLED=false)")
        if self.feeder is not None:
            self.feeder.flush()
        return monitor

    def sample(self, model: ModelRuntime) -> Reservoir:
        """The live-input sample of a loaded model, up to date; :class:`NotFound` when sampling is off."""
        reservoir = self.samples.get((model.name, model.version))
        if reservoir is None:
            raise NotFound("the live-input sample is off (BNSERVE_DRIFT_SAMPLE_ROWS=0)")
        if self.feeder is not None:
            self.feeder.flush()
        return reservoir

    def drift_labels(self) -> dict[str | tuple[str, ...], DriftMonitor]:
        """The monitors, up to date, keyed by their Prometheus label values ``(model, version)``."""
        if self.feeder is not None and self.drift:
            self.feeder.flush()
        return {(name, str(version)): monitor for (name, version), monitor in self.drift.items()}

    async def start(self, observers_for: ObserversFor | None = None) -> None:
        """Load the repository, give every model its observers, start the inference threads, turn ready."""
        settings = self.settings
        started = time.perf_counter()
        # Observers run batched, after the responses, every 20 ms at most: on this loop when the rows are few,
        # on the feeder's thread when they are many (service/observers.py says why).
        self.feeder = ObserverFeeder()
        self.feeder.start(asyncio.get_running_loop())
        manager = ModelManager(
            settings.model_repository,
            settings.model_control_mode,
            settings.intra_op_threads,
            Hooks(
                prepare=lambda model: self._attach(model, observers_for),
                retire=self._detach,
                published=self.metrics.set_models,
                failed=lambda name, version, reason: self.metrics.load_failures.labels(name).inc(),
            ),
        )
        try:
            repository = await anyio.to_thread.run_sync(manager.start)
        except ModelLoadError as exc:
            self.startup_error = str(exc)  # python -m service prints it, in one line
            raise
        self.offload = Offload(
            settings.inline_max_bytes, batching=settings.batching, in_flight=connections.requests_in_flight
        )
        connections.listeners[:] = [self.metrics.connection_closed]  # this process's server, this app
        self.metrics.set_models(repository, time.perf_counter() - started)
        self.manager = manager
        self.metrics.ready.set(1)
        # Everything allocated so far (FastAPI, pydantic, onnxruntime, the models) lives as long as the process:
        # move it out of the collector's sight. Otherwise every full collection walks it, a ~30 ms pause that
        # was the p99 at concurrency 32 (45 ms -> 13 ms with the freeze, BENCHMARKS.md).
        gc.collect()
        gc.freeze()
        for model in repository:
            log.info(
                "loaded %s/%d (%s, %d features, %d outputs) from %s",
                model.name,
                model.version,
                model.contract.task,
                len(model.contract.feature_names),  # all of them, numeric or not
                model.contract.n_outputs,
                model.path,
            )
        # Last, so that a failed start-up leaves no timer behind
        self.yielder = LoopYielder(settings.cpu_yield_ms / 1000)
        self.yielder.start(asyncio.get_running_loop())
        if settings.model_control_mode == "poll":
            self.poller = RepositoryPoller(
                manager, settings.repository_poll_seconds, settings.repository_file_events
            )
            self.poller.start()

    def _attach(self, model: ModelRuntime, observers_for: ObserversFor | None) -> None:
        """A version about to serve (at start-up or in a swap): its drift monitor, sample and observers, before
        its first request. The dicts are replaced, never mutated: a scrape may be reading them on another thread."""
        assert self.feeder is not None, "the feeder starts before the first model loads"
        settings, key, what = self.settings, (model.name, model.version), f"{model.name}/{model.version}"
        tab = model.tabular
        pairs = model.categorical_spec is not None  # observers take (x, categorical)
        monitor: ModelDriftMonitor | None = None
        if settings.drift_enabled:
            # The hidden layers' outputs come from the run that served the rows (the layer observers). With
            # several workers, the statistics live in files every worker maps: one estimate, whichever worker
            # served the rows or answers the report.
            layers = settings.drift_layers and bool(model.hidden_output_names)
            monitor = ModelDriftMonitor(
                model.contract,
                settings.drift_config(),
                name=what,
                hidden_outputs=model.hidden_outputs if layers else None,
                shared=self.metrics.shared_path(f"drift-{model.name}-{model.version}.state"),
                tabular=tab,
                layer_rows_per_second=settings.drift_layers_max_rows,
            )
            if layers:
                # The row budget is applied where the model runs: a run computes the hidden layers only when
                # the budget has room, and only the rows taken are handed to the feeder.
                model.layer_observers.append(self.feeder.wrap_layers(monitor.update_sampled, what))
                model.layer_sampler = monitor.layer_budget if monitor.layer_budget.rate > 0 else None
            else:
                model.observers.append(self.feeder.wrap(_numbers(monitor.update, pairs), what, pairs))
            self.drift = {**self.drift, key: monitor}
        if settings.drift_max_rows > 0:  # the observers' row budget, decided where the model runs
            model.row_sampler = RowBudget(settings.drift_max_rows, seed=1)
        if settings.drift_sample_rows:
            # A fixed seed: the same traffic gives the same sample (still uniform over the rows)
            reservoir = Reservoir(settings.drift_sample_rows, model.n_features, seed=0)
            model.observers.append(self.feeder.wrap(_numbers(reservoir.update, pairs), what, pairs))
            self.samples = {**self.samples, key: reservoir}
        if tab is not None:
            model.observers.append(self.feeder.wrap(self._cell_counter(model, tab, monitor), what, pairs))
        if observers_for is not None:
            model.observers.extend(
                self.feeder.wrap(_numbers(observe, pairs), what, pairs) for observe in observers_for(model)
            )

    def _cell_counter(self, model: ModelRuntime, tab: Tabular, monitor: ModelDriftMonitor | None) -> Observer:
        """The observer counting missing cells and unknown categories: the metrics, the drift report's rates."""
        names = tab.names
        categorical = [s.name for s in tab.categorical]
        metrics = self.metrics

        def observe(batch: Any) -> None:
            x, s = batch if isinstance(batch, tuple) else (batch, None)
            counts = count_cells(tab, x, s)
            metrics.count_cells(model.name, model.version, names, categorical, counts)
            if monitor is not None and monitor.cells is not None:
                monitor.cells.add(counts)

        return observe

    def _detach(self, model: ModelRuntime) -> None:
        """A version that no longer serves: its monitor and sample leave the reports and the gauges."""
        key = (model.name, model.version)
        self.drift = {k: m for k, m in self.drift.items() if k != key}
        self.samples = {k: r for k, r in self.samples.items() if k != key}

    async def stop(self) -> None:
        """Not ready any more; stop re-reading the repository; let inferences finish; observe what is pending."""
        self.begin_shutdown()
        if self.yielder is not None:
            self.yielder.stop()
        if self.poller is not None:
            await self.poller.stop()
        if self.access_log is not None:
            self.access_log.close()
        # The inferences first: one that ends during the shutdown hands its rows to the feeder, which then
        # observes them before it closes.
        if self.offload is not None:
            await anyio.to_thread.run_sync(self.offload.close)
        if self.feeder is not None:
            await anyio.to_thread.run_sync(self.feeder.close)


def _numbers(observe: Observer, pairs: bool) -> Observer:
    """An observer of the numeric rows only (drift, the live sample, a test's observer): ``x`` of
    ``(x, categorical)``."""
    return (lambda batch: observe(batch[0])) if pairs else observe
