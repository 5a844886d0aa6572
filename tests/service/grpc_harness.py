"""A bnserve app with its gRPC port, in process, for the gRPC tests: the HTTP side through TestClient."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.dataplane import new_request_id
from service.grpc_server import InferenceServicer, create_server
from service.lifecycle import ModelManager
from service.settings import Settings
from service.state import ServiceState
from service.tracing import Tracing
from tests.service.conftest import settings_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GrpcService:
    """A running service: its gRPC address, settings and state."""

    address: str
    settings: Settings
    state: ServiceState
    http: Any

    def rest_json(self, path: str) -> Any:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def metric(self, sample: str) -> float:
        """The value of one sample, ``name{labels}`` as Prometheus prints it (0 when absent)."""
        text = self.state.metrics.render().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                if f"{s.name}{{{labels}}}" == sample:
                    return float(s.value)
        return 0.0

    def begin_shutdown(self) -> None:
        self.state.begin_shutdown()


@contextmanager
def serve_grpc(
    root: Path, tracing: Tracing | None = None, repository_api: Any = None, **overrides: Any
) -> Iterator[GrpcService]:
    """The service on ``root`` with gRPC on a free port; small limits unless overridden."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    settings = settings_for(root, **{"max_batch_rows": 64, "max_body_bytes": 65536, **overrides})
    state = ServiceState(settings=settings)
    state.manager = ModelManager(root, mode="none")
    state.manager.start()
    executor = ThreadPoolExecutor(2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def offload(nbytes: int, compressed: bool, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    port = free_port()

    async def start() -> Any:
        server = create_server(
            InferenceServicer(state, offload, new_request_id, tracing, repository_api), settings, port
        )
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        with TestClient(create_app(settings)) as http:
            yield GrpcService(f"127.0.0.1:{port}", settings, state, http)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        executor.shutdown()
