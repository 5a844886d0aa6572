"""Prometheus metrics, in a registry owned by one app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from service.repository import ModelRepository

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """Request count by model, protocol and status; latency; rows per request; what is loaded."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bnserve_requests",
            "HTTP requests, by model (empty when none), protocol (v2, v1, health, other) and status code.",
            ["model", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bnserve_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Histogram(
            "bnserve_request_rows",
            "Rows per successful inference request.",
            ["model", "protocol"],
            buckets=_ROW_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "bnserve_model_info",
            "1 for every loaded model version, with its task and sizes as labels.",
            ["model", "version", "task", "features", "outputs"],
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "bnserve_model_load_seconds",
            "Seconds it took to load and check the whole model repository at start-up.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "bnserve_ready", "1 while the service accepts inference requests.", registry=self.registry
        )

    def set_models(self, repository: ModelRepository, load_seconds: float) -> None:
        """Record what the repository loaded."""
        for model in repository:
            mc = model.contract
            self.model_info.labels(
                model.name, str(model.version), mc.task, str(mc.n_features), str(mc.n_outputs)
            ).set(1)
        self.load_seconds.set(load_seconds)

    def observe(self, model: str, protocol: str, status: int, seconds: float, rows: int | None) -> None:
        """Account for one finished request."""
        self.requests.labels(model, protocol, str(status)).inc()
        self.latency.labels(model, protocol).observe(seconds)
        if rows is not None:
            self.rows.labels(model, protocol).observe(rows)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
