"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on ``grpc.aio``.

The server runs on the event loop uvicorn runs, in the same process (one set of models, inference threads,
drift monitors and metrics for both protocols). Each RPC takes the path an HTTP request takes: the same model
lookup, the data plane's :func:`~service.dataplane.infer_grpc` (V2's checks, in V2's words), the same
inline-or-threadpool choice (:class:`~service.dataplane.Offload`), the same key decision
(:class:`~service.auth.ApiKey` on the ``authorization: Bearer <key>`` metadata) on the same operations
(metadata, inference, repository; health open), the same metrics (``protocol="grpc"``, or ``"health"`` for
the health RPCs, with the HTTP-equivalent status so that one alert covers both), the same access-log line,
the same request ids (``x-request-id`` metadata in, trailing metadata out) and the same spans.

Errors are the typed errors of :mod:`service.errors`, sent as the gRPC status of their HTTP status with their
message: 400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND,
409 -> FAILED_PRECONDITION, 413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, anything unexpected -> INTERNAL with the request id. Messages
larger than ``max_body_bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED) before they are read.

Shutdown: from the moment shutdown begins (SIGTERM: readiness goes false) every RPC but the health ones is
answered UNAVAILABLE "shutting down" (the status clients retry elsewhere), while the RPCs already running
finish; when the app's lifespan ends, after uvicorn's HTTP drain, :meth:`GrpcServer.stop` closes the port and
gives what is still running ``graceful_timeout`` seconds.

Repository RPCs (RepositoryIndex / Load / Unload) answer through a :class:`RepositoryApi` when one is given
(the service's ``service.lifecycle.ModelManager``), and are UNIMPLEMENTED otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from grpc import aio

from service import dataplane, proto, v2_grpc
from service.auth import ApiKey
from service.dataplane import RequestInfo
from service.errors import NotReady, ServiceError, Unauthorized
from service.runtime import ModelRuntime
from service.settings import Settings
from service.state import ServiceState
from service.tracing import carrier_from_pairs

log = logging.getLogger("bnserve.grpc")

#: HTTP status of a typed error -> the gRPC status it is sent as (the usual HTTP/gRPC correspondence).
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,  # the server's state forbids it (an unload in poll mode)
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
HEALTH_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
#: Operations open without the key, as on HTTP (the health routes).
OPEN_RPCS = HEALTH_RPCS
KEY_CHALLENGE = "missing or wrong API key: send 'authorization: Bearer <key>' metadata"


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


class InferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService`` over the service's state."""

    def __init__(
        self, state: ServiceState, auth: ApiKey, repository_api: RepositoryApi | None = None
    ) -> None:
        self.state = state
        self.auth = auth
        self.repository_api = repository_api

    # ---- the RPCs ------------------------------------------------------------------------------------------
    async def ServerLive(self, request: Any, info: RequestInfo) -> Any:
        return proto.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, info: RequestInfo) -> Any:
        return proto.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: Any, info: RequestInfo) -> Any:
        self._model(request.name, request.version, info)
        return proto.ModelReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request: Any, info: RequestInfo) -> Any:
        return v2_grpc.server_metadata(self.state.version)

    async def ModelMetadata(self, request: Any, info: RequestInfo) -> Any:
        model = self._model(request.name, request.version, info)
        versions = sorted(self.state.models().models[model.name]) if not request.version else [model.version]
        return v2_grpc.model_metadata(model, versions)

    async def ModelInfer(self, request: Any, info: RequestInfo) -> Any:
        model = self._model(request.model_name, request.model_version, info)
        offload = self.state.offload
        assert offload is not None, "ServiceState.start creates it before the server starts"
        return await offload.infer(
            request.ByteSize(), False, dataplane.decode_grpc, info, model, request, self.state.limits, info
        )

    # The repository API scans the disk and loads models: blocking work, on a worker thread.
    async def RepositoryIndex(self, request: Any, info: RequestInfo) -> Any:
        assert self.repository_api is not None
        entries = await asyncio.to_thread(self.repository_api.index, request.ready)
        return proto.RepositoryIndexResponse(models=entries)

    async def RepositoryModelLoad(self, request: Any, info: RequestInfo) -> Any:
        assert self.repository_api is not None
        info.model = request.model_name
        await asyncio.to_thread(self.repository_api.load, request.model_name)
        return proto.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, info: RequestInfo) -> Any:
        assert self.repository_api is not None
        info.model = request.model_name
        await asyncio.to_thread(self.repository_api.unload, request.model_name)
        return proto.RepositoryModelUnloadResponse()

    def _model(self, name: str, version: str, info: RequestInfo) -> ModelRuntime:
        model = self.state.models().get(name, version or None)
        info.model, info.version = model.name, model.version
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
        refused_while_draining = name not in HEALTH_RPCS
        protocol = "health" if name in HEALTH_RPCS else "grpc"
        path = proto.method_path(name)
        span_name = path[1:]
        span_attributes = {"rpc.system": "grpc", "rpc.service": proto.SERVICE, "rpc.method": name}

        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata() or ()
            info = RequestInfo(dataplane.request_id(_first(metadata, "x-request-id")))
            tracing = self.state.tracing
            if tracing is not None:
                info.trace = tracing.start(span_name, carrier_from_pairs(metadata), span_attributes)
            status, message = 200, ""
            try:
                if guarded and not self.auth.allows(_as_headers(metadata)):
                    raise Unauthorized(KEY_CHALLENGE)
                if refused_while_draining and self.state.draining:
                    raise NotReady("shutting down")
                return await rpc(request, info)
            except ServiceError as exc:
                status, message = exc.status_code, exc.message
            except asyncio.CancelledError:  # the client went away, or the server stopped waiting
                status = 499
                raise
            except Exception:
                log.exception("unhandled error in %s", path, extra={"request_id": info.request_id})
                status, message = 500, f"internal server error (request id {info.request_id})"
            finally:
                trailing = (("x-request-id", info.request_id),)
                context.set_trailing_metadata(trailing)
                code = (
                    grpc.StatusCode.OK if status == 200 else GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
                )
                self._account(path, protocol, info, status, code, time.perf_counter() - started, context)
            await context.abort(code, message, trailing_metadata=trailing)

        return handle

    def _account(
        self,
        path: str,
        protocol: str,
        info: RequestInfo,
        status: int,
        code: grpc.StatusCode,
        seconds: float,
        context: aio.ServicerContext,
    ) -> None:
        """Metrics, span and access-log line of one finished RPC (what HTTP's middleware does for a request)."""
        self.state.metrics.observe(
            info.model, protocol, status, seconds, info.rows if status == 200 else None
        )
        if info.trace is not None:
            # A client's mistake is not a server error (OpenTelemetry's rule for server spans).
            error = f"{code.name}" if status >= 500 else None
            info.trace.finish(
                info.model, info.version, info.rows, {"rpc.grpc.status_code": code.value[0]}, error
            )
        access = self.state.access_log
        if access is not None:
            access.record(
                "GRPC", path, status, seconds, info.request_id, protocol, info.model, info.version, info.rows,
                context.peer() or None,
            )  # fmt: skip


def _first(metadata: Sequence[tuple[str, Any]], key: str) -> str | None:
    value = next((v for k, v in metadata if k == key), None)
    return value if isinstance(value, str) else None


def _as_headers(metadata: Sequence[tuple[str, Any]]) -> list[tuple[bytes, bytes]]:
    """gRPC metadata as the raw header pairs :class:`~service.auth.ApiKey` reads (keys are lower case)."""
    return [
        (key.encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else bytes(value))
        for key, value in metadata
        if key == "authorization"
    ]


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


class GrpcServer:
    """The gRPC server's life on the app's event loop: started after the models, drained at shutdown."""

    def __init__(
        self, state: ServiceState, auth: ApiKey, repository_api: RepositoryApi | None = None
    ) -> None:
        self.state = state
        self.servicer = InferenceServicer(state, auth, repository_api)
        self.server: aio.Server | None = None

    async def start(self) -> None:
        """Listen on ``host:grpc_port``; :class:`OSError` with one line when the port cannot be bound."""
        settings = self.state.settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        server = aio.server(options=server_options(settings, reuse_port=settings.workers > 1))
        server.add_generic_rpc_handlers((self.servicer.rpc_handler(),))
        try:
            server.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"cannot listen for gRPC on {address} (is the port taken?)") from None
        await server.start()
        self.server = server
        log.info("gRPC (Open Inference Protocol) on %s", address)

    async def stop(self) -> None:
        """Close the port, give the RPCs still in flight ``graceful_timeout`` seconds, finish."""
        if self.server is not None:
            await self.server.stop(self.state.settings.graceful_timeout)
            self.server = None
