"""Request tracing with OpenTelemetry: opt-in through the standard ``OTEL_*`` variables, nothing when off.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none`` (``otlp``, ``console``, or
any exporter package registers), or when an OTLP endpoint is given (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, then the exporter is ``otlp``); ``OTEL_SDK_DISABLED=true`` turns it
off. Everything else is the SDK's own reading of the standard variables: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the service name defaults to ``bnserve``), ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``, and ``OTEL_PROPAGATORS`` (W3C ``traceparent`` by default).

Each request gets one server span, a child of the caller's span when the request carries a ``traceparent``
(HTTP header or gRPC metadata), and a child span per step: ``decode``, ``inference``, ``encode``. The spans
carry the model's name and version and the number of rows.

When tracing is off the SDK is not imported (the API is: FastAPI imports it) and a request pays for a few
``is None`` tests and three ``with`` statements on a shared null context (:func:`step`); BENCHMARKS.md,
"Tracing", measures it. FastAPI's own instrumentation is turned off (``service.app``) so that a global tracer
provider set by someone else cannot add a second set of spans.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import Any

#: Span attributes of the model a request used, and its number of rows.
MODEL_NAME = "bnserve.model.name"
MODEL_VERSION = "bnserve.model.version"
ROWS = "bnserve.rows"
SERVICE_NAME = "bnserve"

_NO_STEP: AbstractContextManager[None] = contextlib.nullcontext()
#: Exporter names of OTEL_TRACES_EXPORTER -> the entry point (group ``opentelemetry_traces_exporter``) by protocol.
_OTLP = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class TracingError(Exception):
    """The OTEL_* variables ask for something this installation cannot do; the message is one line."""


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables in ``environ`` ask for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def step(trace: RequestTrace | None, name: str) -> AbstractContextManager[Any]:
    """A child span ``name`` of the request's span, or a shared no-op when the request is not traced."""
    return _NO_STEP if trace is None else trace.step(name)


class RequestTrace:
    """The server span of one request and the context its child spans hang from."""

    __slots__ = ("_context", "_tracer", "span")

    def __init__(self, tracer: Any, span: Any, context: Any) -> None:
        self._tracer = tracer
        self.span = span
        self._context = context

    def step(self, name: str) -> AbstractContextManager[Any]:
        """A child span; works from any thread (the parent is explicit, not the thread's current span)."""
        return self._tracer.start_as_current_span(name, context=self._context)

    def finish(
        self,
        model: str,
        version: int | None,
        rows: int | None,
        attributes: Mapping[str, Any],
        error: str | None = None,
    ) -> None:
        """Close the span with the model that answered, the rows, the outcome; ``error`` marks it failed."""
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        if model:
            span.set_attribute(MODEL_NAME, model)
        if version is not None:
            span.set_attribute(MODEL_VERSION, str(version))
        if rows is not None:
            span.set_attribute(ROWS, rows)
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


class Tracing:
    """A tracer of its own provider (not the process-global one) and the configured propagator."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate

        self.provider = provider
        self._tracer = provider.get_tracer(SERVICE_NAME)
        self._propagator = propagate.get_global_textmap()  # OTEL_PROPAGATORS; tracecontext,baggage by default

    @classmethod
    def from_env(cls, version: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
        """The tracing ``environ`` asks for, or ``None``; :class:`TracingError`.

        ``environ`` (default: the process environment) decides whether and what to export; the SDK reads the
        rest of the OTEL_* variables from the process environment itself.
        """
        env = os.environ if environ is None else environ
        if not requested(env):
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise TracingError(
                "the OTEL_* variables ask for traces but opentelemetry-sdk is not installed "
                "(pip install 'bnserve[tracing]', or unset OTEL_TRACES_EXPORTER)"
            ) from None
        exporters = [_exporter(name, env) for name in _exporter_names(env)]
        resource = Resource.create({"service.version": version})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def start(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> RequestTrace:
        """Open the server span of a request; its parent is the ``traceparent`` in ``carrier``, if any."""
        from opentelemetry import trace

        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=dict(attributes)
        )
        return RequestTrace(self._tracer, span, trace.set_span_in_context(span, parent))

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporters."""
        self.provider.shutdown()


def carrier_from_pairs(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """HTTP headers or gRPC metadata as the lower-cased ``str`` mapping propagators read."""
    out = {}
    for key, value in pairs:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        out[k.lower()] = v
    return out


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    return [n for n in names if n and n != "none"]


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """An instance of exporter ``name`` (OTEL_TRACES_EXPORTER's vocabulary), from the installed packages."""
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol not in _OTLP:
            raise TracingError(f"unsupported OTLP protocol {protocol!r}; use http/protobuf or grpc")
        name = _OTLP[protocol]
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        available = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise TracingError(
            f"OTEL_TRACES_EXPORTER asks for {name!r} but no installed package provides it "
            f"(installed: {', '.join(available) or 'none'}; pip install 'bnserve[tracing]' brings otlp over HTTP)"
        )
    return found[0].load()()
