"""What every HTTP request goes through: request id, body limit, access log, metrics, span, the catch-all 500.

:class:`RequestContext` is pure ASGI middleware around everything else (the fast path and FastAPI's stack);
the error handlers FastAPI calls give every other error the same ``{"error": "..."}`` shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.dataplane import JSON, RequestInfo, new_request_id, request_id
from service.errors import PayloadTooLarge, ServiceError, Unauthorized
from service.logs import escape
from service.state import ServiceState
from service.tracing import carrier_from_pairs

log = logging.getLogger("bnserve")

#: The status of a request whose client went away before it could be answered (nginx's convention): a client
#: error, neither a 5xx nor a traceback.
CLIENT_CLOSED = 499


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The one error shape of this service: ``{"error": "..."}``."""
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=JSON, headers=headers)


def service_error_response(exc: ServiceError) -> Response:
    """The JSON answer to a typed error (the status it carries; a bearer challenge with a 401)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(exc.status_code, exc.message, headers)


def request_info(request: Request) -> RequestInfo:
    """The request's :class:`RequestInfo`, for the routes to note the model and rows in."""
    info = request.scope.get("bnserve.info")
    if info is None:  # only when the app is driven without its middleware
        info = request.scope["bnserve.info"] = RequestInfo(new_request_id())
    return info


_MODEL_PATH = re.compile(r"(/v[12]/models/)[^/:]+")
_VERSION_PATH = re.compile(r"/versions/[^/:]+")


def http_route(path: str) -> str:
    """The route template of a path (``/v2/models/{name}/infer``), for span names of bounded cardinality;
    empty for paths outside the service's routes."""
    if path in ("/metrics", "/v2", "/v2/health/live", "/v2/health/ready"):
        return path
    if not path.startswith(("/v1/models/", "/v2/models/")):
        return ""
    return _MODEL_PATH.sub(r"\1{name}", _VERSION_PATH.sub("/versions/{version}", path), count=1)


def _protocol(path: str) -> str:
    if path.startswith("/v2/health") or path.endswith("/ready"):
        return "health"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):
        return "v1"
    return "metrics" if path == "/metrics" else "other"


class RequestContext:
    """Pure ASGI middleware: request id, body limit, HEAD, clients gone, unexpected exceptions -> JSON 500,
    access log, metrics.

    The body limit is decided here, for every route: a declared Content-Length over it gets a 413 before the
    body is read; a body without one (chunked) is counted as it is received, and reading past the limit raises
    :class:`PayloadTooLarge` in whoever reads it. ``HEAD`` is answered as the ``GET`` of the same path (the
    server sends the head only). A client that goes away before its body is complete is status 499 with one
    INFO line; a request still waiting for its body when the server stops gets a JSON 503.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        info = RequestInfo(request_id(headers.get(b"x-request-id", b"").decode("latin-1")))
        scope["bnserve.info"] = info
        if self.state.tracing is not None:
            route = http_route(scope["path"])
            info.trace = self.state.tracing.start(
                f"{scope['method']} {route}" if route else scope["method"],
                carrier_from_pairs(scope["headers"]),
                {
                    "http.request.method": scope["method"],
                    "url.path": scope["path"][:200],
                    "http.route": route,
                },
            )
        declared = headers.get(b"content-length")
        if declared is None:
            receive = self._limited(receive)
        elif declared.isdigit() and int(declared) > self.limit:
            await error_response(413, self._too_large())(scope, receive, send)
            self._account(scope, info, 413, time.perf_counter() - started)
            return
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", info.request_id.encode()),
                ]
            await send(message)

        # The server writes only the head of a HEAD response (and its Content-Length): the app answers a GET.
        inner = {**scope, "method": "GET"} if scope["method"] == "HEAD" else scope
        try:
            await self.app(inner, receive, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            log.info(
                "client went away before the request was complete (request %s, %s %s)",
                info.request_id,
                scope["method"],
                escape(scope["path"][:200]),
                extra={"request_id": info.request_id},
            )
        except asyncio.CancelledError:
            # The server stops and its graceful timeout is over: uvicorn cancels what still runs (a request
            # whose client never sent its whole body). An answer rather than uvicorn's plain-text 500 and a
            # traceback; the task then ends normally.
            log.info(
                "request %s cancelled: the server is shutting down", info.request_id,
                extra={"request_id": info.request_id},
            )  # fmt: skip
            if not response_started:
                await error_response(503, "the server is shutting down", {"Connection": "close"})(
                    scope, receive, send_with_id
                )
            status = 503
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

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.limit} bytes"

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises :class:`PayloadTooLarge` once the body exceeds the limit."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self._too_large())
            return message

        return limited

    def _account(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        client = scope.get("client")
        account(
            self.state, scope["method"], scope["path"], client[0] if client else None, info, status, seconds
        )


def account(
    state: ServiceState,
    method: str,
    path: str,
    client: str | None,
    info: RequestInfo,
    status: int,
    seconds: float,
) -> None:
    """Metrics, the span's end and the access-log line of one finished request (whichever way it was served:
    :class:`RequestContext`, or :mod:`service.wire`)."""
    protocol = _protocol(path)
    state.metrics.observe(info.model, protocol, status, seconds, info.rows if status == 200 else None)
    if info.trace is not None:
        # A client's mistake (4xx) is not a server error (OpenTelemetry's rule for server spans).
        error = f"HTTP {status}" if status >= 500 else None
        info.trace.finish(info.model, info.version, info.rows, {"http.response.status_code": status}, error)
    access = state.access_log
    if access is not None:
        access.record(
            method,
            path,
            status,
            seconds,
            info.request_id,
            protocol,
            info.model,
            info.version,
            info.rows,
            client,
        )


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own errors: unknown route (404), wrong method (405).
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")


#: FastAPI's exception handlers: every error its routing raises, in the service's one error shape.
EXCEPTION_HANDLERS: dict[Any, Any] = {
    ServiceError: _service_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
}
