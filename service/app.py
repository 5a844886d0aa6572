"""``create_app(settings)``: the bnserve ASGI app, assembled from its parts and nothing else.

A small inference request (POST, up to ``inline_max_bytes``, uncompressed, tracing off) never reaches the ASGI
app: the connection's protocol hands it to :class:`~service.wire.WirePath`, which the lifespan puts in the
state uvicorn gives every connection. Through the app, outermost first, a request meets
:class:`~service.middleware.RequestContext` (request id, body limit, access log, metrics, span, the catch-all
500), then :class:`~service.fastpath.FastPath` (the inference routes), then
FastAPI's routing over :func:`~service.routes.route_table`. Models load in the lifespan
(:meth:`~service.state.ServiceState.start`); the gRPC server (:mod:`service.grpc_server`) starts after them
on the same event loop and drains beside HTTP at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import ApiKey
from service.connections import WIRE_STATE_KEY
from service.docs import add_docs
from service.fastpath import FastPath
from service.grpc_server import GrpcServer
from service.metrics import register_drift_gauges
from service.middleware import EXCEPTION_HANDLERS, RequestContext
from service.openapi import openapi_builder
from service.routes import register, route_table
from service.settings import Settings
from service.state import ObserversFor, ServiceState
from service.tracing import Tracing, TracingError
from service.wire import WirePath


def create_app(
    settings: Settings, observers_for: ObserversFor | None = None, tracing: Tracing | None = None
) -> FastAPI:
    """The bnserve ASGI app for ``settings``; models load when its lifespan starts, then the gRPC server
    (``settings.grpc_port``, on the same event loop) starts.

    With ``settings.drift_enabled``, every loaded model version gets a drift monitor fed its served rows
    (``GET /v2/models/{name}/drift``, ``bnserve_drift_*`` gauges). ``observers_for(model)``, when given, is
    called once per loaded model and returns further callables fed the float32 rows of each successful
    inference (a uniform sample of each batch above ``settings.drift_max_rows`` rows a second). Requests are
    traced by ``tracing`` when given, else as the OTEL_* variables say (:meth:`Tracing.from_env`: off unless
    they ask).
    """
    state = ServiceState(settings=settings)
    auth = ApiKey(settings.api_key.get_secret_value() if settings.api_key is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            state.tracing = tracing if tracing is not None else Tracing.from_env(state.version)
        except TracingError as exc:
            state.startup_error = str(exc)
            raise
        await state.start(observers_for)
        # The repository RPCs answer through the same ModelManager as the REST repository routes.
        grpc = GrpcServer(state, auth, repository_api=state.manager) if settings.grpc_port else None
        try:
            if grpc is not None:
                try:
                    await grpc.start()
                except OSError as exc:
                    state.startup_error = str(exc)
                    raise
            # The lifespan state reaches every connection's protocol (uvicorn's app_state): the wire path.
            yield {WIRE_STATE_KEY: WirePath(state, routes, auth)} if settings.wire_path else {}
        finally:
            state.begin_shutdown()  # already begun on SIGTERM; here when the lifespan ends otherwise
            if grpc is not None:
                await grpc.stop()
            await state.stop()
            if state.tracing is not None:
                state.tracing.shutdown()

    app = Service(
        title="bnserve",
        version=state.version,
        description="Batch-normalized MLPs folded into ONNX, served with the KServe V2 (Open Inference) "
        "and V1 protocols.",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        docs_url=None,  # add_docs serves them, without a CDN
        redoc_url=None,
        # FastAPI's own OpenTelemetry instrumentation stays off: it would not see the fast path or gRPC, and it
        # would duplicate our spans (service.tracing) whenever a global tracer provider is set.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = state
    # Read at scrape time from whatever monitors the lifespan made; nothing on the prediction path. The
    # monitors' state is shared by the workers, so their gauges need no replica label.
    register_drift_gauges(state.metrics.shared, state.drift_labels, labels=("model", "version"))
    routes = route_table(state)
    register(app, routes, auth)
    add_docs(app)
    fast = FastPath(app.fastapi_stack, routes, auth, state)
    app.front = RequestContext(fast, state)
    app.openapi = openapi_builder(app, state, auth.required)  # type: ignore[method-assign]
    return app


class Service(FastAPI):
    """FastAPI, behind the service's own pure-ASGI layers.

    An HTTP request meets :attr:`front` first (``RequestContext``, then ``FastPath``), and FastAPI's whole
    stack (its error, telemetry and routing layers) only when the fast path does not answer it: an inference
    request never enters FastAPI, which costs as much per request as decoding, predicting and encoding one row.
    """

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.front(scope, receive, send)
        else:  # the lifespan
            await super().__call__(scope, receive, send)

    async def fastapi_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI itself, for every request the fast path passes on."""
        await super().__call__(scope, receive, send)
