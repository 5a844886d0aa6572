"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``.

The server runs on the event loop uvicorn runs (one process, one loop: the same models, threadpool, drift
monitors and metrics as HTTP, no copy of anything). Each RPC takes the path an HTTP request takes: the same
model lookup and checks (:mod:`service.v2_grpc` decodes with V2's checks), the same inline-or-threadpool choice
for the blocking work, the same bearer key (``authorization: Bearer <key>`` metadata) on the same operations
(metadata and inference; health open), the same metrics (``protocol="grpc"``, or ``"health"`` for the health
RPCs, and the HTTP-equivalent status so that one alert covers both), the same access-log line and the same
request ids (``x-request-id`` metadata in, trailing metadata out).

Errors are the typed errors of :mod:`service.errors`, sent as the gRPC status of their class with their
message: 400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND,
413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, anything unexpected -> INTERNAL with the request id. Messages larger than
``max_body_bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED) before they are read.

Repository RPCs (RepositoryIndex / Load / Unload) answer through a :class:`RepositoryApi` when one is given
(``service.lifecycle.ModelManager``), and are UNIMPLEMENTED otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc import aio

from service import proto, v2_grpc
from service.dataplane import REQUEST_ID
from service.errors import NotReady, ServiceError, Unauthorized
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime import ModelRuntime
from service.settings import Settings
from service.tracing import RequestTrace, Tracing, carrier_from_pairs, step

log = logging.getLogger("bnserve.grpc")
access_log = logging.getLogger("bnserve.access")

#: HTTP status of a typed error -> the gRPC status it is sent as.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HEALTH_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
#: Operations open without the bearer key, as on HTTP (the health routes).
OPEN_RPCS = HEALTH_RPCS

#: ``offload(nbytes, compressed, fn, *args)``: ``fn(*args)`` inline or on the inference threads (app.py decides).
Offload = Callable[..., Awaitable[Any]]


class ServiceView(Protocol):
    """What the servicer reads of the service state (``service.state.ServiceState``)."""

    settings: Settings
    metrics: Metrics
    version: str
    draining: bool

    @property
    def ready(self) -> bool: ...

    def models(self) -> ModelRepository: ...


class RepositoryApi(Protocol):
    """The model repository extension's logic (``service.lifecycle.ModelManager``); blocking, typed errors."""

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version with ``name``, ``version``, ``state`` and ``reason``."""
        ...

    def load(self, name: str) -> None:
        """Load or reload model ``name``."""
        ...

    def unload(self, name: str) -> None:
        """Stop serving model ``name``."""
        ...


@dataclass
class CallInfo:
    """Per-RPC facts for the access log, the metrics and the span."""

    request_id: str
    model: str = ""
    version: int | None = None
    rows: int | None = None


class InferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService`` over the service's state."""

    def __init__(
        self,
        state: ServiceView,
        offload: Offload,
        new_request_id: Callable[[], str],
        tracing: Tracing | None = None,
        repository_api: RepositoryApi | None = None,
    ) -> None:
        self.state = state
        self.offload = offload
        self.new_request_id = new_request_id
        self.tracing = tracing
        self.repository_api = repository_api
        key = state.settings.api_key
        self._authorization = b"Bearer " + key.get_secret_value().encode() if key is not None else None

    # ---- the RPCs ------------------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        return proto.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        return proto.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        self._model(request.name, request.version, info, trace)
        return proto.ModelReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        return v2_grpc.server_metadata(self.state.version)

    async def ModelMetadata(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        model = self._model(request.name, request.version, info, trace)
        versions = sorted(self.state.models().models[model.name]) if not request.version else [model.version]
        return v2_grpc.model_metadata(model, versions)

    async def ModelInfer(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        if self.state.draining:
            raise NotReady("shutting down")
        model = self._model(request.model_name, request.model_version, info, trace)
        return await self.offload(request.ByteSize(), False, self._infer, model, request, info, trace)

    def _infer(self, model: ModelRuntime, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        """The blocking part: decode, predict, encode (inline or on an inference thread)."""
        with step(trace, "decode"):
            decoded = v2_grpc.parse_infer_request(request, model, self.state.settings.max_batch_rows)
        info.rows = len(decoded.x)
        if trace is not None:
            trace.rows(info.rows)
        with step(trace, "inference"):
            results = model.predict(decoded.x)
        with step(trace, "encode"):
            return v2_grpc.encode_infer_response(model, decoded, results)

    # The repository API scans the disk and loads models: blocking work, on a worker thread.
    async def RepositoryIndex(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        assert self.repository_api is not None
        entries = await asyncio.to_thread(self.repository_api.index, request.ready)
        return proto.RepositoryIndexResponse(models=entries)

    async def RepositoryModelLoad(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        assert self.repository_api is not None
        info.model = request.model_name
        await asyncio.to_thread(self.repository_api.load, request.model_name)
        return proto.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, info: CallInfo, trace: RequestTrace | None) -> Any:
        assert self.repository_api is not None
        info.model = request.model_name
        await asyncio.to_thread(self.repository_api.unload, request.model_name)
        return proto.RepositoryModelUnloadResponse()

    def _model(self, name: str, version: str, info: CallInfo, trace: RequestTrace | None) -> ModelRuntime:
        model = self.state.models().get(name, version or None)
        info.model, info.version = model.name, model.version
        if trace is not None:
            trace.model(model.name, model.version)
        return model

    # ---- transport -----------------------------------------------------------------------------------------
    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """One generic handler for every RPC implemented here (the others answer UNIMPLEMENTED)."""
        table = {}
        for name, (request_class, response_class) in proto.METHODS.items():
            if name.startswith("Repository") and self.repository_api is None:
                continue
            table[name] = grpc.unary_unary_rpc_method_handler(
                self._handle(name, getattr(self, name)),
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(proto.SERVICE, table)

    def _handle(self, name: str, rpc: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """``rpc`` with what every call gets: request id, key check, span, error mapping, metrics, log."""
        guarded = name not in OPEN_RPCS
        protocol = "health" if name in HEALTH_RPCS else "grpc"
        path = proto.method_path(name)
        span_name = path[1:]
        span_attributes = {"rpc.system": "grpc", "rpc.service": proto.SERVICE, "rpc.method": name}

        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()
            info = CallInfo(_request_id(metadata) or self.new_request_id())
            trace = None
            if self.tracing is not None:
                trace = self.tracing.start(span_name, carrier_from_pairs(metadata), span_attributes)
            status, message = 200, ""
            try:
                if guarded and not self._authorized(metadata):
                    raise Unauthorized(
                        "missing or wrong API key: send 'authorization: Bearer <key>' metadata"
                    )
                return await rpc(request, info, trace)
            except ServiceError as exc:
                status, message = exc.status_code, exc.message
            except asyncio.CancelledError:  # the client went away (or the server stopped waiting)
                status = 499
                raise
            except Exception:
                log.exception(
                    "unhandled error in %s %s", path, info.request_id, extra={"request_id": info.request_id}
                )
                status, message = 500, f"internal server error (request id {info.request_id})"
            finally:
                context.set_trailing_metadata((("x-request-id", info.request_id),))
                code = (
                    GRPC_CODES.get(status, grpc.StatusCode.INTERNAL) if status != 200 else grpc.StatusCode.OK
                )
                self._account(path, protocol, info, status, code, time.perf_counter() - started, context)
                if trace is not None:
                    trace.end(
                        {"rpc.grpc.status_code": code.value[0]},
                        error=message if status >= 500 else None,
                    )
            await context.abort(code, message, trailing_metadata=(("x-request-id", info.request_id),))

        return handle

    def _authorized(self, metadata: Sequence[tuple[str, Any]]) -> bool:
        if self._authorization is None:
            return True
        offered = next((v for k, v in metadata if k == "authorization"), "")
        given = offered.encode("latin-1") if isinstance(offered, str) else bytes(offered)
        return hmac.compare_digest(given, self._authorization)

    def _account(
        self,
        path: str,
        protocol: str,
        info: CallInfo,
        status: int,
        code: grpc.StatusCode,
        seconds: float,
        context: aio.ServicerContext,
    ) -> None:
        """Metrics and the access-log line of one finished RPC (as HTTP's middleware writes them)."""
        self.state.metrics.observe(
            info.model, protocol, status, seconds, info.rows if status == 200 else None
        )
        if not self.state.settings.access_log:
            return
        peer = context.peer() or ""
        access_log.info(
            "GRPC %s %s %.2fms",
            path,
            code.name,
            seconds * 1e3,
            extra={
                "request_id": info.request_id,
                "method": "GRPC",
                "path": path,
                "status": status,
                "grpc_status": code.name,
                "duration_ms": round(seconds * 1e3, 3),
                "protocol": protocol,
                "model": info.model or None,
                "model_version": info.version,
                "rows": info.rows,
                "client": peer,
            },
        )


def _request_id(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The caller's ``x-request-id``, when it is a sane one (same rule as HTTP's header)."""
    given = next((v for k, v in metadata if k == "x-request-id"), None)
    return given if isinstance(given, str) and REQUEST_ID.fullmatch(given) else None


def server_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    """gRPC channel arguments of the server: the body limit, and SO_REUSEPORT only when workers share the port.

    gRPC sets SO_REUSEPORT by default, which would let a second server start on a taken port without an error;
    off, a taken port fails the start. With several worker processes each binds the port itself with
    SO_REUSEPORT and the kernel spreads new connections over them (a connection, with all its streams, stays
    with the worker that accepted it).
    """
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def create_server(
    servicer: InferenceServicer, settings: Settings, port: int, reuse_port: bool = False
) -> aio.Server:
    """A ``grpc.aio`` server on the running loop, bound to ``settings.host:port`` (not started)."""
    server = aio.server(options=server_options(settings, reuse_port))
    server.add_generic_rpc_handlers((servicer.rpc_handler(),))
    address = f"[{settings.host}]:{port}" if ":" in settings.host else f"{settings.host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    return server
