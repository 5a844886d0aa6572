"""What every HTTP request goes through: request id, body limit, access log, metrics, the catch-all 500.

:class:`RequestContext` is pure ASGI middleware around everything else (the fast path and FastAPI's stack);
the error handlers FastAPI calls give every other error the same ``{"error": "..."}`` shape.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.dataplane import JSON, REQUEST_ID, RequestInfo, new_request_id
from service.errors import PayloadTooLarge, ServiceError, Unauthorized
from service.state import ServiceState

log = logging.getLogger("bnserve")
access_log = logging.getLogger("bnserve.access")


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


def _protocol(path: str) -> str:
    if path.startswith("/v2/health") or path.endswith("/ready"):
        return "health"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):
        return "v1"
    return "metrics" if path == "/metrics" else "other"


class RequestContext:
    """Pure ASGI middleware: request id, body limit, unexpected exceptions -> JSON 500, access log, metrics.

    The body limit is decided here, for every route: a declared Content-Length over it gets a 413 before the
    body is read; a body without one (chunked) is counted as it is received, and reading past the limit raises
    :class:`PayloadTooLarge` in whoever reads it.
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
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        info = RequestInfo(given if REQUEST_ID.fullmatch(given) else new_request_id())
        scope["bnserve.info"] = info
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
                MutableHeaders(scope=message).append("X-Request-ID", info.request_id)
            await send(message)

        try:
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
