"""``create_app(settings)``: the HTTP routes (KServe V2, V1, health, metrics). Thin: logic lives elsewhere.

Models load in the lifespan. The blocking steps of an inference (decoding, onnxruntime, encoding) run in the
threadpool; only when ``settings.inline_max_bytes`` is set do small uncompressed bodies, whose whole work costs
less than the thread hop, run on the event loop. Errors of the V2 and V1 routes are ``{"error": "..."}`` with
the status their type carries.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import itertools
import logging
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic.json_schema import models_json_schema
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import package_version
from service import schemas, v1, v2
from service.drift import DriftMonitor, register_prometheus
from service.errors import (
    BadRequest,
    ModelLoadError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
)
from service.metrics import CONTENT_TYPE, Metrics
from service.observers import ObserverFeeder
from service.repository import ModelRepository, load_repository
from service.runtime import ModelRuntime, Observer
from service.settings import Settings

log = logging.getLogger("bnserve")
access_log = logging.getLogger("bnserve.access")

_bearer = HTTPBearer(auto_error=False, description="Only when BNSERVE_API_KEY is set.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
JSON = "application/json"
# Request ids: 16 random hex digits per process, then a counter; unique like uuid4, a fraction of its cost.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A fresh 32-hex-digit request id, unique across processes and restarts."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass
class ServiceState:
    """What the routes share: settings, the loaded models, their drift monitors, readiness, metrics."""

    settings: Settings
    metrics: Metrics = field(init=False)
    repository: ModelRepository | None = None
    drift: dict[tuple[str, int], DriftMonitor] = field(default_factory=dict)  # by (name, version)
    feeder: ObserverFeeder | None = None  # runs the observers of inferences made on the event loop
    executor: ThreadPoolExecutor | None = None  # runs the blocking part of inference requests
    draining: bool = False
    startup_error: str | None = None
    version: str = field(default_factory=package_version)

    def __post_init__(self) -> None:
        self.metrics = Metrics(workers=self.settings.workers)

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

    def model(self, request: Request, name: str, version: str | None) -> ModelRuntime:
        """Resolve a model for a request and note it for the access log and metrics."""
        found = self.models().get(name, version)
        info = request_info(request)
        info.model, info.version = found.name, found.version
        return found

    def drift_monitor(self, model: ModelRuntime) -> DriftMonitor:
        """The drift monitor of a loaded model, up to date; :class:`NotFound` when monitoring is off."""
        monitor = self.drift.get((model.name, model.version))
        if monitor is None:
            raise NotFound("drift monitoring is off (BNSERVE_DRIFT_ENABLED=false)")
        if self.feeder is not None:
            self.feeder.flush()
        return monitor

    def drift_labels(self) -> dict[str | tuple[str, ...], DriftMonitor]:
        """The monitors, up to date, keyed by their Prometheus label values ``(model, version)``."""
        if self.feeder is not None and self.drift:
            self.feeder.flush()
        return {(name, str(version)): monitor for (name, version), monitor in self.drift.items()}


@dataclass
class RequestInfo:
    """Per-request facts the routes fill in for the access log and the metrics."""

    request_id: str
    model: str = ""
    version: int | None = None
    rows: int | None = None


def request_info(request: Request) -> RequestInfo:
    info = request.scope.get("bnserve.info")
    if info is None:  # only when the app is driven without its middleware
        info = request.scope["bnserve.info"] = RequestInfo(new_request_id())
    return info


def _protocol(path: str) -> str:
    if path.startswith("/v2/health") or path.endswith("/ready"):
        return "health"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):
        return "v1"
    return "metrics" if path == "/metrics" else "other"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The one error shape of this service: ``{"error": "..."}``."""
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=JSON, headers=headers)


def service_error_response(exc: ServiceError) -> Response:
    """The JSON answer to a typed error (the status it carries; a bearer challenge with a 401)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(exc.status_code, exc.message, headers)


#: A route function of the fast path, called with the request and the path's groups (name[, version]).
FastHandler = Callable[..., Awaitable[Response]]


class RequestContext:
    """Pure ASGI middleware: request id, unexpected exceptions -> JSON 500, access log line, metrics.

    It also serves the inference routes itself (``fast_routes``), past FastAPI's routing, dependency and
    exception layers, which cost as much per request as decoding, predicting and encoding one row
    (BENCHMARKS.md). The same route functions answer; only requests whose every check the stack would make is
    already settled go this way: POST with a Content-Length (checked against the limit above), and the right
    bearer key when one is set. Everything else, errors included, takes the FastAPI route.
    """

    def __init__(
        self,
        app: ASGIApp,
        state: ServiceState,
        fast_routes: Sequence[tuple[re.Pattern[str], FastHandler]] = (),
    ) -> None:
        self.app = app
        self.state = state
        self.fast_routes = fast_routes
        key = state.settings.api_key
        self.authorization = b"Bearer " + key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        info = RequestInfo(given if _REQUEST_ID.fullmatch(given) else new_request_id())
        scope["bnserve.info"] = info
        limit = self.state.settings.max_body_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, f"request body exceeds the limit of {limit} bytes")(
                scope, receive, send
            )
            self._account(scope, info, 413, time.perf_counter() - started)
            return
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", info.request_id)
            await send(message)

        try:
            if scope["method"] == "POST" and b"content-length" in headers and self._authorized(headers):
                for pattern, handler in self.fast_routes:
                    match = pattern.fullmatch(scope["path"])
                    if match is not None:
                        try:
                            response = await handler(Request(scope, receive), *match.groups())
                        except ServiceError as exc:
                            response = service_error_response(exc)
                        await response(scope, receive, send_with_id)
                        return
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in request %s", info.request_id, extra={"request_id": info.request_id}
            )
            if not response_started:
                await error_response(500, f"internal server error (request id {info.request_id})")(
                    scope, receive, send_with_id
                )
            status = 500
        finally:
            self._account(scope, info, status, time.perf_counter() - started)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self.authorization is None:
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), self.authorization)

    def _account(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        """Metrics and the access-log line of one finished request."""
        protocol = _protocol(scope["path"])
        self.state.metrics.observe(
            info.model, protocol, status, seconds, info.rows if status == 200 else None
        )
        if not self.state.settings.access_log:
            return
        client = scope.get("client")
        access_log.info(
            "%s %s %d %.2fms",
            scope["method"],
            scope["path"][:200],
            status,
            seconds * 1e3,
            extra={
                "request_id": info.request_id,
                "method": scope["method"],
                "path": scope["path"][:200],
                "status": status,
                "duration_ms": round(seconds * 1e3, 3),
                "protocol": protocol,
                "model": info.model or None,
                "model_version": info.version,
                "rows": info.rows,
                "client": client[0] if client else None,
            },
        )


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip | deflate`` (tritonclient can send either), never beyond ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise BadRequest(f"unsupported Content-Encoding {encoding[:32]!r}; use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest(f"the body is not valid {encoding} data") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    return out


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "Bad request: the message names the problem."},
    401: {"model": schemas.ErrorResponse, "description": "Missing or wrong bearer key (when auth is on)."},
    404: {"model": schemas.ErrorResponse, "description": "Unknown model or version."},
    413: {"model": schemas.ErrorResponse, "description": "Body or batch larger than the configured limits."},
    500: {
        "model": schemas.ErrorResponse,
        "description": "Unexpected error; the message carries a request id.",
    },
    503: {"model": schemas.ErrorResponse, "description": "Models not loaded yet."},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERROR_RESPONSES[code] for code in codes}


def _json_body(model: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}}},
        }
    }


def create_app(
    settings: Settings, observers_for: Callable[[ModelRuntime], list[Observer]] | None = None
) -> FastAPI:
    """The bnserve ASGI app for ``settings``; models load when its lifespan starts.

    With ``settings.drift_enabled``, every loaded model version gets a :class:`DriftMonitor` fed its served
    rows (``GET /v2/models/{name}/drift``, ``bnserve_drift_*`` gauges). ``observers_for(model)``, when given,
    is called once per loaded model and returns further callables fed the float32 rows of each successful
    inference.
    """
    state = ServiceState(settings=settings)
    # 0: every inference in the threadpool. Otherwise small bodies run on the loop (they cost ~0.1-0.3 ms, less
    # than the hop to the threadpool and back, which takes two thread wake-ups and a GIL hand-off).
    inline_max_bytes = settings.inline_max_bytes

    async def offload(body: bytes, compressed: bool, fn: Callable[..., Response], *args: Any) -> Response:
        """``fn(*args)`` on the inference threads, off the event loop; on the loop only when
        ``inline_max_bytes`` is set and ``body`` is uncompressed and no larger than it."""
        if inline_max_bytes and not compressed and len(body) <= inline_max_bytes:
            return fn(*args)
        assert state.executor is not None, "the lifespan creates the executor before any request"
        return await asyncio.get_running_loop().run_in_executor(state.executor, functools.partial(fn, *args))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            repository = await anyio.to_thread.run_sync(
                load_repository, settings.model_repository, settings.intra_op_threads
            )
        except ModelLoadError as exc:
            state.startup_error = str(exc)  # python -m service prints it, in one line
            raise
        # Observers run on the feeder thread, batched, after the response's outputs: never on the loop and never
        # on a request's critical path.
        feeder = ObserverFeeder()
        monitors = {}
        for model in repository:
            what = f"{model.name}/{model.version}"
            if settings.drift_enabled:
                monitor = DriftMonitor.from_contract(model.contract, settings.drift_config(), name=what)
                model.observers.append(feeder.wrap(monitor.update, what))
                monitors[(model.name, model.version)] = monitor
            if observers_for is not None:
                model.observers.extend(feeder.wrap(observe, what) for observe in observers_for(model))
        state.drift, state.feeder = monitors, feeder
        # A plain executor rather than anyio's worker threads: the hop there and back is the largest fixed
        # cost of a batch-1 request (measured ~65 us against ~95 us through starlette's run_in_threadpool).
        state.executor = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="infer"
        )
        state.metrics.set_models(repository, time.perf_counter() - started)
        state.repository = repository
        state.metrics.ready.set(1)
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
                model.n_features,
                model.contract.n_outputs,
                model.path,
            )
        try:
            yield
        finally:
            state.begin_shutdown()
            await anyio.to_thread.run_sync(feeder.close)
            if state.executor is not None:
                await anyio.to_thread.run_sync(state.executor.shutdown)

    app = FastAPI(
        title="bnserve",
        version=state.version,
        description="Batch-normalized MLPs folded into ONNX, served with the KServe V2 (Open Inference) "
        "and V1 protocols.",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.service = state
    # Read at scrape time from whatever monitors the lifespan made; nothing on the prediction path.
    register_prometheus(state.metrics.registry, state.drift_labels, labels=("model", "version"))
    # Outermost, around FastAPI's own error and body-limit middleware: it sees every request and exception,
    # and answers an oversized Content-Length with a JSON 413 before the body limiter's plain-text one.
    build_stack = app.build_middleware_stack
    fast_routes: list[tuple[re.Pattern[str], FastHandler]] = []  # filled below, with the inference routes
    app.build_middleware_stack = lambda: RequestContext(build_stack(), state, fast_routes)  # type: ignore[method-assign]

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Answered here; RequestContext logs the exception with its request id when it propagates.
        return error_response(500, f"internal server error (request id {request_info(request).request_id})")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return service_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 413:
            message = f"request body exceeds the limit of {settings.max_body_bytes} bytes"
        return error_response(exc.status_code, message, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    async def require_key(credentials: BearerCredentials) -> None:
        offered = credentials.credentials.encode() if credentials else b""
        if api_key is not None and not hmac.compare_digest(offered, api_key):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    # Health and metrics stay open; the security scheme is only declared when a key is set.
    guarded: list[Any] = [Depends(require_key)] if api_key is not None else []

    # ---- health --------------------------------------------------------------------------------------------
    @app.get(
        "/v2/health/live",
        tags=["health"],
        response_class=Response,
        summary="Server live",
        responses={200: {"description": "The process is up (empty body)."}},
    )
    def live() -> Response:
        return Response(status_code=200)

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        response_class=Response,
        summary="Server ready",
        responses={200: {"description": "Every model is loaded (empty body)."}, **_errors(503)},
    )
    def ready() -> Response:
        if not state.ready:
            raise NotReady("shutting down" if state.draining else "the models are not loaded yet")
        return Response(status_code=200)

    def model_ready(request: Request, name: str) -> Response:
        return _model_ready(request, name, None)

    def model_version_ready(request: Request, name: str, version: str) -> Response:
        return _model_ready(request, name, version)

    def _model_ready(request: Request, name: str, version: str | None) -> Response:
        state.model(request, name, version)
        if not state.ready:
            raise NotReady("shutting down")
        return Response(status_code=200)

    ready_doc: dict[str, Any] = {
        "tags": ["health"],
        "response_class": Response,
        "responses": {200: {"description": "The model is ready (empty body)."}, **_errors(404, 503)},
    }
    app.get("/v2/models/{name}/ready", summary="Model ready", **ready_doc)(model_ready)
    app.get("/v2/models/{name}/versions/{version}/ready", summary="Model version ready", **ready_doc)(
        model_version_ready
    )

    # ---- V2 metadata and inference --------------------------------------------------------------------------
    @app.get(
        "/v2",
        tags=["v2"],
        summary="Server metadata",
        dependencies=guarded,
        response_model=schemas.ServerMetadata,
        responses=_errors(401),
    )
    def server_metadata() -> Response:
        return Response(orjson.dumps(v2.server_metadata(state.version)), media_type=JSON)

    def model_metadata(request: Request, name: str) -> Response:
        return _model_metadata(request, name, None)

    def model_version_metadata(request: Request, name: str, version: str) -> Response:
        return _model_metadata(request, name, version)

    def _model_metadata(request: Request, name: str, version: str | None) -> Response:
        model = state.model(request, name, version)
        versions = sorted(state.models().models[name]) if version is None else [model.version]
        return Response(orjson.dumps(v2.model_metadata(model, versions)), media_type=JSON)

    meta_doc: dict[str, Any] = {
        "tags": ["v2"],
        "dependencies": guarded,
        "response_model": schemas.ModelMetadata,
        "responses": _errors(401, 404, 503),
    }
    app.get("/v2/models/{name}", summary="Model metadata", **meta_doc)(model_metadata)
    app.get("/v2/models/{name}/versions/{version}", summary="Model version metadata", **meta_doc)(
        model_version_metadata
    )

    def v2_infer_sync(
        model: ModelRuntime, body: bytes, headers: dict[str, str], info: RequestInfo
    ) -> Response:
        body = _decompress(body, headers.get("content-encoding"), settings.max_body_bytes)
        request = v2.parse_infer_request(
            body, headers.get(v2.HEADER_LENGTH.lower()), model, settings.max_batch_rows
        )
        info.rows = len(request.x)
        results = model.predict(request.x)
        content, out_headers = v2.encode_infer_response(model, request, results)
        return Response(content, headers=out_headers)

    async def v2_infer(request: Request, name: str) -> Response:
        return await _v2_infer(request, name, None)

    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        return await _v2_infer(request, name, version)

    async def _v2_infer(request: Request, name: str, version: str | None) -> Response:
        model = state.model(request, name, version)
        body = await request.body()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k in ("content-encoding", "inference-header-content-length")
        }
        compressed = "content-encoding" in headers
        return await offload(body, compressed, v2_infer_sync, model, body, headers, request_info(request))

    infer_doc: dict[str, Any] = {
        "tags": ["v2"],
        "dependencies": guarded,
        "openapi_extra": _json_body("InferenceRequest"),
        "responses": {
            200: {
                "description": "Outputs; with binary outputs, a JSON header of Inference-Header-Content-Length "
                "bytes followed by the raw tensors.",
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(400, 401, 404, 413, 503),
        },
        "response_class": Response,
    }
    app.post("/v2/models/{name}/infer", summary="Inference", **infer_doc)(v2_infer)
    app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference on a version", **infer_doc)(
        v2_infer_version
    )
    # The same paths as Starlette compiles them ({param} is [^/]+), for RequestContext's fast path.
    fast_routes.append((re.compile(r"/v2/models/([^/]+)/infer"), v2_infer))
    fast_routes.append((re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer"), v2_infer_version))

    # ---- V1 ---------------------------------------------------------------------------------------------------
    def v1_predict_sync(
        model: ModelRuntime, body: bytes, encoding: str | None, info: RequestInfo
    ) -> Response:
        body = _decompress(body, encoding, settings.max_body_bytes)
        x = v1.parse_predict_request(body, model, settings.max_batch_rows)
        info.rows = len(x)
        return Response(v1.encode_predict_response(model, model.predict(x)), media_type=JSON)

    async def v1_predict(request: Request, name: str) -> Response:
        return await _v1_predict(request, name, None)

    async def v1_predict_version(request: Request, name: str, version: str) -> Response:
        return await _v1_predict(request, name, version)

    async def _v1_predict(request: Request, name: str, version: str | None) -> Response:
        model = state.model(request, name, version)
        body = await request.body()
        encoding = request.headers.get("content-encoding")
        compressed = encoding is not None
        return await offload(body, compressed, v1_predict_sync, model, body, encoding, request_info(request))

    predict_doc: dict[str, Any] = {
        "tags": ["v1"],
        "dependencies": guarded,
        "openapi_extra": _json_body("V1PredictRequest"),
        "response_model": schemas.V1PredictResponse,
        "response_class": Response,
        "responses": _errors(400, 401, 404, 413, 503),
    }
    app.post("/v1/models/{name}:predict", summary="Predict (V1)", **predict_doc)(v1_predict)
    app.post(
        "/v1/models/{name}/versions/{version}:predict", summary="Predict on a version (V1)", **predict_doc
    )(v1_predict_version)
    fast_routes.append((re.compile(r"/v1/models/([^/]+):predict"), v1_predict))
    fast_routes.append((re.compile(r"/v1/models/([^/]+)/versions/([^/]+):predict"), v1_predict_version))

    @app.get(
        "/v1/models/{name}",
        tags=["v1"],
        summary="Model status (V1)",
        dependencies=guarded,
        response_model=schemas.V1ModelStatus,
        responses=_errors(401, 404, 503),
    )
    def v1_status(request: Request, name: str) -> Response:
        model = state.model(request, name, None)
        versions = sorted(state.models().models[name])
        return Response(orjson.dumps(v1.model_status(model, versions, state.ready)), media_type=JSON)

    # ---- drift --------------------------------------------------------------------------------------------------
    # Plain ``def`` routes: a report is ~0.1 ms of numpy, run in the threadpool like inference.
    def drift(request: Request, name: str) -> Response:
        return _drift(request, name, None, reset=False)

    def drift_version(request: Request, name: str, version: str) -> Response:
        return _drift(request, name, version, reset=False)

    def drift_reset(request: Request, name: str) -> Response:
        return _drift(request, name, None, reset=True)

    def drift_reset_version(request: Request, name: str, version: str) -> Response:
        return _drift(request, name, version, reset=True)

    def _drift(request: Request, name: str, version: str | None, *, reset: bool) -> Response:
        model = state.model(request, name, version)
        monitor = state.drift_monitor(model)
        if reset:
            monitor.reset()
        report = monitor.report() | {"model": model.name, "version": str(model.version)}
        return Response(orjson.dumps(report), media_type=JSON)

    drift_doc: dict[str, Any] = {
        "tags": ["drift"],
        "dependencies": guarded,
        "response_model": schemas.DriftReport,
        "response_class": Response,
        "responses": _errors(401, 404, 503),
    }
    app.get(
        "/v2/models/{name}/drift",
        summary="Input drift",
        description="How far the rows served since start-up (or the last reset) are from the training "
        "distribution: per-feature PSI and mean shift, the model's score (max PSI), whether it is drifting.",
        **drift_doc,
    )(drift)
    app.get("/v2/models/{name}/versions/{version}/drift", summary="Input drift of a version", **drift_doc)(
        drift_version
    )
    app.post(
        "/v2/models/{name}/drift/reset",
        summary="Reset input drift",
        description="Forget the live rows (after acting on a drift) and re-arm the warning; returns the "
        "empty report.",
        **drift_doc,
    )(drift_reset)
    app.post(
        "/v2/models/{name}/versions/{version}/drift/reset",
        summary="Reset input drift of a version",
        **drift_doc,
    )(drift_reset_version)

    # ---- metrics and docs ---------------------------------------------------------------------------------------
    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE: {}}}},
    )
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    app.openapi = _openapi_builder(app, state)  # type: ignore[method-assign]
    return app


def _openapi_builder(app: FastAPI, state: ServiceState) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with the request-body schemas and examples built from the first loaded model."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [
                (schemas.InferenceRequest, "validation"),
                (schemas.V1PredictRequest, "validation"),
                (schemas.InferenceResponse, "serialization"),
            ],
            ref_template="#/components/schemas/{model}",
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        if state.repository is not None and len(state.repository):
            _add_examples(spec, next(iter(state.repository)))
        if state.repository is not None:  # cache only the complete schema
            app.openapi_schema = spec
        return spec

    return build


def _add_examples(spec: dict[str, Any], model: ModelRuntime) -> None:
    """Working examples in /docs: the model's name and version, and a row of its training means."""
    row = [round(float(v), 4) for v in model.contract.input_stats.mean]
    f = model.n_features
    v2_examples = {
        "nested": {
            "summary": "one row, nested data",
            "value": {
                "id": "example-1",
                "inputs": [{"name": "input", "shape": [1, f], "datatype": "FP32", "data": [row]}],
            },
        },
        "flat": {
            "summary": "two rows, flat data, selected output",
            "value": {
                "inputs": [{"name": "input", "shape": [2, f], "datatype": "FP64", "data": row + row}],
                "outputs": [{"name": model.output_names[0]}],
            },
        },
    }
    v1_examples = {
        "rows": {"summary": "rows in feature order", "value": {"instances": [row]}},
        "named": {
            "summary": "named features",
            "value": {
                "instances": [dict(zip(model.contract.feature_names, row))],
            },
        },
    }
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("name") == "name":
                    param["example"] = model.name
                elif param.get("name") == "version":
                    param["example"] = str(model.version)
            content = operation.get("requestBody", {}).get("content", {}).get(JSON)
            if content is not None:
                content["examples"] = v2_examples if path.startswith("/v2") else v1_examples
