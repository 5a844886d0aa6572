"""The app in process with its gRPC port: ``create_app`` under TestClient, whose lifespan starts the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import free_port
from service.app import create_app
from service.settings import Settings
from service.state import ServiceState
from service.tracing import Tracing
from tests.service.conftest import settings_for


@dataclass
class GrpcService:
    """A running app: its gRPC address, its HTTP client, settings and state."""

    address: str
    http: TestClient
    settings: Settings
    state: ServiceState

    def rest_json(self, path: str) -> Any:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def metric(self, sample: str) -> float:
        """The value of one sample, ``name{labels}`` as Prometheus prints it (0 when absent)."""
        text = self.http.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                if f"{s.name}{{{labels}}}" == sample:
                    return float(s.value)
        return 0.0


@contextmanager
def serve_grpc(root: Path, tracing: Tracing | None = None, **overrides: Any) -> Iterator[GrpcService]:
    """The app on ``root`` with gRPC on a free port; small limits unless overridden."""
    settings = settings_for(
        root, **{"max_batch_rows": 64, "max_body_bytes": 65536, "grpc_port": free_port(), **overrides}
    )
    app = create_app(settings, tracing=tracing)
    with TestClient(app) as http:
        yield GrpcService(f"127.0.0.1:{settings.grpc_port}", http, settings, app.state.service)
