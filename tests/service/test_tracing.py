"""Request tracing: spans checked with the OpenTelemetry SDK's in-memory exporter; the OTEL_* switch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service import proto, tracing
from service.tracing import Tracing, TracingError
from tests.service.conftest import Repo
from tests.service.grpc_harness import GrpcService, serve_grpc
from tests.service.test_grpc import _infer, call, error_of

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(repo: Repo, exporter: InMemorySpanExporter) -> Iterator[GrpcService]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with serve_grpc(repo.root, tracing=Tracing(provider)) as service:
        yield service


def test_grpc_inference_span_and_its_steps(traced: GrpcService, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    call(traced, "ModelInfer", _infer(shape=(3, 64)), metadata=(("traceparent", TRACEPARENT),))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["decode", "encode", "inference", "inference.GRPCInferenceService/ModelInfer"]
    root = spans["inference.GRPCInferenceService/ModelInfer"]
    assert root.kind == SpanKind.SERVER
    assert root.context.trace_id == TRACE_ID and root.parent is not None and root.parent.span_id == PARENT_ID
    assert root.parent.is_remote
    attributes = dict(root.attributes or {})
    assert attributes[tracing.MODEL_NAME] == "digits" and attributes[tracing.MODEL_VERSION] == "2"
    assert attributes[tracing.ROWS] == 3
    assert attributes["rpc.method"] == "ModelInfer" and attributes["rpc.grpc.status_code"] == 0
    for name in ("decode", "inference", "encode"):
        child = spans[name]
        assert child.context.trace_id == TRACE_ID
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    assert spans["decode"].end_time <= spans["inference"].start_time <= spans["inference"].end_time
    assert spans["inference"].end_time <= spans["encode"].start_time


def test_a_span_without_traceparent_starts_a_trace(
    traced: GrpcService, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    call(traced, "ServerReady", proto.ServerReadyRequest())
    (span,) = exporter.get_finished_spans()
    assert span.name == "inference.GRPCInferenceService/ServerReady" and span.parent is None


def test_failed_requests(traced: GrpcService, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    error_of(traced, "ModelInfer", _infer(shape=(1, 63)), metadata=(("traceparent", TRACEPARENT),))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["decode", "inference.GRPCInferenceService/ModelInfer"]
    root = spans["inference.GRPCInferenceService/ModelInfer"]
    # A client's mistake is not a server error (OpenTelemetry's rule for server spans); the step that
    # refused it records the exception.
    assert root.status.status_code == StatusCode.UNSET
    assert dict(root.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert spans["decode"].status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in spans["decode"].events)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_SERVICE_NAME": "x"}, False),
    ],
)
def test_tracing_is_opt_in(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on
    made = Tracing.from_env("1.2.3", environ)
    assert (made is not None) is on
    if made is not None:
        resource = made.provider.resource.attributes
        assert resource["service.name"] == "bnserve" and resource["service.version"] == "1.2.3"
        made.shutdown()


def test_service_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "digits-prod")
    made = Tracing.from_env("1", {"OTEL_TRACES_EXPORTER": "console"})
    assert made is not None and made.provider.resource.attributes["service.name"] == "digits-prod"
    made.shutdown()


def test_an_exporter_that_is_not_installed_is_a_readable_error() -> None:
    with pytest.raises(TracingError, match="asks for 'zipkin' but no installed package provides it"):
        Tracing.from_env("1", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingError, match="unsupported OTLP protocol 'http/json'"):
        Tracing.from_env("1", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_http_inference_span_and_its_steps(traced: GrpcService, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}
    response = traced.http.post(
        "/v2/models/digits/versions/1/infer", json=body, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root_name = "POST /v2/models/{name}/versions/{version}/infer"
    assert sorted(spans) == sorted([root_name, "decode", "inference", "encode"])
    root = spans[root_name]
    assert root.kind == SpanKind.SERVER and root.context.trace_id == TRACE_ID
    assert root.parent is not None and root.parent.span_id == PARENT_ID
    attributes = dict(root.attributes or {})
    assert attributes[tracing.MODEL_NAME] == "digits" and attributes[tracing.MODEL_VERSION] == "1"
    assert attributes[tracing.ROWS] == 2 and attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/v2/models/digits/versions/1/infer"
    for name in ("decode", "inference", "encode"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id


def test_v1_and_refused_http_requests_are_traced(traced: GrpcService, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    assert traced.http.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200
    assert traced.http.post("/v1/models/iris:predict", json={"instances": [[1, 2]]}).status_code == 400
    roots = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/models/{name}:predict"]
    assert [dict(s.attributes or {})["http.response.status_code"] for s in roots] == [200, 400]
    assert all(s.status.status_code == StatusCode.UNSET for s in roots)


def test_tracing_off_imports_no_opentelemetry_sdk(repo: Repo) -> None:
    """Off (no OTEL_* asking for traces), serving requests never imports the SDK (FastAPI imports the API)."""
    code = (
        "import sys; from fastapi.testclient import TestClient; from service.app import create_app; "
        "from service.settings import Settings; "
        f"app = create_app(Settings(model_repository={str(repo.root)!r}, grpc_port=0)); "
        "c = TestClient(app).__enter__(); "
        "r = c.post('/v1/models/iris:predict', json={'instances': [[1, 2, 3, 4]]}); "
        "assert r.status_code == 200, r.text; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BNSERVE_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
