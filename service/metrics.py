"""Prometheus metrics, in a registry owned by one app (tests build many apps in one process).

With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by ``service.server``) the request metrics live in
prometheus-client's per-process files and every scrape, whichever worker answers, reports their aggregate:
counters and histograms summed over all workers, gauges over the live ones by their ``multiprocess_mode``.
``bnserve_ready`` is 1 only when as many live workers as configured have each reported ready: a worker that is
still starting has written no file yet, and a minimum over the files alone would call the service ready
without it. Collectors registered in :attr:`Metrics.registry` by others (the drift gauges) describe the
answering worker only and then carry a ``replica`` label (``<hostname>:<pid>``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from service.drift import DriftMonitor
from service.repository import ModelRepository

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def replica_id() -> str:
    """``<hostname>:<pid>``: tells the workers of one host, and the hosts, apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a worker that crashed or stopped does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """Request count by model, protocol and status; latency; rows per request; what is loaded.

    ``workers`` is how many worker processes the service runs (readiness needs every one of them).
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        #: For per-process collectors (drift); the request metrics below are only in it in one-process mode.
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        own = None if self.multiprocess_dir else self.registry  # multiprocess: values go to the files
        self.requests = Counter(
            "bnserve_requests",
            "HTTP requests, by model (empty when none), protocol (v2, v1, health, other) and status code.",
            ["model", "protocol", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "bnserve_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.rows = Histogram(
            "bnserve_request_rows",
            "Rows per successful inference request.",
            ["model", "protocol"],
            buckets=_ROW_BUCKETS,
            registry=own,
        )
        self.model_info = Gauge(
            "bnserve_model_info",
            "1 for every loaded model version, with its task and sizes as labels.",
            ["model", "version", "task", "features", "outputs"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.load_seconds = Gauge(
            "bnserve_model_load_seconds",
            "Seconds it took to load and check the whole model repository at start-up (slowest live worker).",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "bnserve_ready",
            "1 while the service accepts inference requests (with workers: while every worker does).",
            registry=own,
            multiprocess_mode="liveall",  # one sample per worker; render() combines them
        )
        self.connections_closed = Counter(
            "bnserve_connections_closed",
            "Connections the server closed to bound their cost, by reason: header_too_large (431), "
            "header_timeout (408), body_timeout, evicted (idle or slow at the connection cap), refused (503 at "
            "the cap).",
            ["reason"],
            registry=own,
        )
        #: Collectors that read state every worker shares (the drift monitors' files): no replica label.
        self.shared = CollectorRegistry(auto_describe=True)
        self.load_failures = Counter(
            "bnserve_model_load_failures",
            "Model versions that failed to load or to pass their checks, so never served (by model; with workers, each worker counts its own attempt).",
            ["model"],
            registry=own,
        )
        self.missing_cells = Counter(
            "bnserve_missing_cells",
            "Missing cells of served rows the graph imputed (null, a missing key, NaN, empty string), by model, "
            "version and feature.",
            ["model", "version", "feature"],
            registry=own,
        )
        self.unknown_categories = Counter(
            "bnserve_unknown_category",
            "Categories of served rows the model was not trained on (the graph's unknown bucket), by model, "
            "version and feature.",
            ["model", "version", "feature"],
            registry=own,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._info_labels: set[tuple[str, str, str, str, str]] = set()

    def shared_path(self, name: str) -> Path | None:
        """Where workers share a state file ``name`` (the metrics directory), or None in one process."""
        return None if self.multiprocess_dir is None else Path(self.multiprocess_dir) / name

    def connection_closed(self, reason: str) -> None:
        """Count a connection the server closed (see :mod:`service.connections`)."""
        self.connections_closed.labels(reason).inc()

    def set_models(self, repository: ModelRepository, load_seconds: float | None = None) -> None:
        """Record what is served now (after start-up, and after every swap): gone versions read 0."""
        labels = {
            (
                m.name,
                str(m.version),
                m.contract.task,
                str(len(m.contract.feature_names)),
                str(m.contract.n_outputs),
            )
            for m in repository
        }
        for gone in self._info_labels - labels:
            # A multiprocess gauge keeps its file entry when removed: 0 says "no longer served" everywhere.
            self.model_info.labels(*gone).set(0)
            if self.multiprocess_dir is None:
                self.model_info.remove(*gone)
        for label in labels:
            self.model_info.labels(*label).set(1)
        self._info_labels = labels
        if load_seconds is not None:
            self.load_seconds.set(load_seconds)

    def observe(self, model: str, protocol: str, status: int, seconds: float, rows: int | None) -> None:
        """Account for one finished request."""
        key = (model, protocol, status)
        children = self._children.get(key)
        if children is None:  # ``labels()`` validates and locks on every call; do it once per label set
            children = self._children[key] = (
                self.requests.labels(model, protocol, str(status)),
                self.latency.labels(model, protocol),
                self.rows.labels(model, protocol),
            )
        requests, latency, rows_per_request = children
        requests.inc()
        latency.observe(seconds)
        if rows is not None:
            rows_per_request.observe(rows)

    def count_cells(
        self, model: str, version: int, features: Sequence[str], categorical: Sequence[str], counts: Any
    ) -> None:
        """Add a batch's :class:`service.cells.CellCounts` (``features`` and ``categorical``: their names)."""
        for name, n in zip(features, counts.missing.tolist()):
            if n:
                self.missing_cells.labels(model, str(version), name).inc(n)
        for name, n in zip(categorical, counts.unknown.tolist()):
            if n:
                self.unknown_categories.labels(model, str(version), name).inc(n)

    def render(self) -> bytes:
        """The text exposition format."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry) + generate_latest(self.shared)
        aggregate = _EveryWorkerReady(MultiProcessCollector(None, path=self.multiprocess_dir), self.workers)
        return (
            generate_latest(aggregate)
            + generate_latest(self.shared)
            + generate_latest(_Labelled(self.registry, "replica", replica_id()))
        )


class _EveryWorkerReady:
    """The workers' aggregate metrics, with their ``bnserve_ready`` samples (one per worker) made into one:
    1 when ``workers`` live workers have each reported 1, else 0."""

    def __init__(self, collector: MultiProcessCollector, workers: int) -> None:
        self.collector, self.workers = collector, workers

    def collect(self) -> Any:
        for family in self.collector.collect():
            if family.name == "bnserve_ready":
                live = [s.value for s in family.samples if pid_alive(int(s.labels["pid"]))]
                ready = len(live) >= self.workers and all(v == 1 for v in live)
                family.samples = [Sample(family.name, {}, float(ready))]
            yield family


class _Labelled:
    """A registry's metrics, every sample with one more label (what ``generate_latest`` needs: ``collect``)."""

    def __init__(self, registry: CollectorRegistry, name: str, value: str) -> None:
        self.registry, self.name, self.value = registry, name, value

    def collect(self) -> Any:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, self.name: self.value}) for sample in family.samples
            ]
            yield labelled


# ---- drift gauges -------------------------------------------------------------------------------------------
_GAUGES = (
    # (report key, metric name, help); one sample per model
    (
        "score",
        "bnserve_drift_score",
        "Input drift score: max over features of PSI against the training deciles.",
    ),
    ("threshold", "bnserve_drift_threshold", "Drift score above which the model is drifting."),
    ("drifting", "bnserve_drift_drifting", "1 if the score is over the threshold on enough rows, else 0."),
    ("rows_effective", "bnserve_drift_rows_effective", "Effective rows the drift estimate rests on."),
    ("rows_seen", "bnserve_drift_rows_seen", "Rows seen since the last drift reset."),
)
_FEATURE_GAUGES = (
    ("psi", "bnserve_drift_feature_psi", "PSI of one input feature against its training deciles."),
    (
        "mean_shift",
        "bnserve_drift_feature_mean_shift",
        "|live mean - training mean| / training std of a feature.",
    ),
)
_LAYER_GAUGES = (
    # (layer report key, metric name, help); one sample per (model, hidden layer)
    ("score", "bnserve_drift_layer_score", "Hidden-layer drift score: max over its units of PSI."),
    (
        "drifting",
        "bnserve_drift_layer_drifting",
        "1 if the layer's score is over the threshold on enough rows.",
    ),
)


def register_drift_gauges(
    registry: Any,
    monitors: Callable[[], Mapping[str | tuple[str, ...], DriftMonitor]],
    *,
    labels: Sequence[str] = ("model",),
    per_feature: bool = True,
) -> Any:
    """Register, in a ``prometheus_client`` registry, gauges read from every monitor's report at scrape time.

    ``monitors`` maps label values to monitors (a model name, or a tuple with one value per name in
    ``labels``, e.g. ``("digits", "1")`` for ``labels=("model", "version")``) and is called at each scrape,
    so models loaded later are picked up, values are never stale, and nothing runs on the prediction path.
    ``per_feature`` adds one PSI and one mean-shift series per (model, feature); hidden layers
    (:class:`service.hidden_drift.ModelDriftMonitor`) one score and one drifting series per (model, layer).
    Returns the collector (to unregister it).
    """
    from prometheus_client.core import GaugeMetricFamily

    names = list(labels)

    def families() -> tuple[list[Any], list[Any], list[Any]]:
        models = [GaugeMetricFamily(name, doc, labels=names) for _, name, doc in _GAUGES]
        feats = [GaugeMetricFamily(name, doc, labels=[*names, "feature"]) for _, name, doc in _FEATURE_GAUGES]
        layers = [GaugeMetricFamily(name, doc, labels=[*names, "layer"]) for _, name, doc in _LAYER_GAUGES]
        return models, feats if per_feature else [], layers

    class DriftCollector:
        def describe(self) -> Iterator[Any]:
            # Without samples: registering must not call ``monitors`` (models may not be loaded yet).
            models, feats, layers = families()
            yield from models + feats + layers

        def collect(self) -> Iterator[Any]:
            models, feats, layers = families()
            for key_values, monitor in monitors().items():
                values = [key_values] if isinstance(key_values, str) else list(key_values)
                if len(values) != len(names):
                    raise ValueError(f"monitor key {key_values!r} does not give one value per label {names}")
                rep = monitor.report()
                for (key, _, _), fam in zip(_GAUGES, models, strict=True):
                    fam.add_metric(values, float(rep[key]))
                for (key, _, _), fam in zip(_FEATURE_GAUGES, feats, strict=False):
                    for feat in rep["features"]:
                        fam.add_metric([*values, feat["name"]], feat[key])
                for (key, _, _), fam in zip(_LAYER_GAUGES, layers, strict=True):
                    for layer in rep.get("layers", ()):  # hidden layers (service.hidden_drift)
                        fam.add_metric([*values, layer["name"]], float(layer[key]))
            yield from models + feats + layers

    collector = DriftCollector()
    registry.register(collector)
    return collector
