"""The fast path: the hot routes of the route table (inference) served past FastAPI and Starlette.

FastAPI's routing, dependency and exception layers, and Starlette's request and response objects, cost as
much per request as decoding, predicting and encoding one row (BENCHMARKS.md). :class:`FastPath` is pure ASGI
middleware that matches the hot routes itself, reads the body straight from ``receive``, runs the route's
``prepare`` and :func:`service.routes.offload` (the very work the FastAPI endpoint does once it has the body)
and sends the reply's two ASGI messages. Only requests whose every check the stack would make is already settled take
it: POST with a Content-Length (the body limit was decided on it, by
:class:`service.middleware.RequestContext`) and, on a guarded route, the right key. Everything else takes the
FastAPI route; the answers are the same bytes either way (``tests/e2e/test_fast_path.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import ApiKey
from service.errors import ServiceError
from service.middleware import service_error_response
from service.routes import Route, offload
from service.state import ServiceState


class FastPath:
    """Serves ``routes`` (the hot POST routes of the table: those with a ``prepare``) directly; passes every other
    request to ``app``."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], auth: ApiKey, state: ServiceState) -> None:
        self.app = app
        self.routes = tuple(r for r in routes if r.prepare is not None)
        self.auth = auth
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = scope["headers"]
            for name, _ in headers:  # a plain loop: this runs on every inference request
                if name == b"content-length":
                    break
            else:
                await self.app(scope, receive, send)
                return
            path = scope["path"]
            for route in self.routes:
                match = route.pattern.fullmatch(path)
                if match is None:
                    continue
                if route.guarded and not self.auth.allows(headers):
                    break  # FastAPI's route answers the 401, with the same decision
                assert route.prepare is not None
                body = await read_body(receive)
                info = scope["bnserve.info"]
                try:
                    prepared = route.prepare(info, body, headers, **match.groupdict())
                    reply = await offload(self.state, info, body, prepared)
                except ServiceError as exc:
                    await service_error_response(exc)(scope, receive, send)
                    return
                await send({"type": "http.response.start", "status": 200, "headers": reply.raw_headers()})
                await send({"type": "http.response.body", "body": reply.body})
                return
        await self.app(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """The whole request body; :class:`ClientDisconnect` when the client goes away first (as Starlette)."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        return message.get("body", b"")  # the usual case: the body came in one message
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
