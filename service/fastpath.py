"""The fast path: the hot routes of the route table (inference) served past FastAPI's own layers.

FastAPI's routing, dependency and exception layers cost as much per request as decoding, predicting and
encoding one row (BENCHMARKS.md). :class:`FastPath` is pure ASGI middleware that matches the hot routes
itself and calls the very endpoints FastAPI would. Only requests whose every check the stack would make is
already settled take it: POST with a Content-Length (the body limit was decided on it, by
:class:`service.middleware.RequestContext`) and, on a guarded route, the right key. Everything else, errors
included, takes the FastAPI route.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import ApiKey
from service.errors import ServiceError
from service.middleware import service_error_response
from service.routes import Route


class FastPath:
    """Serves ``routes`` (POST routes of the table) directly; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], auth: ApiKey) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.auth = auth

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
                try:
                    response = await route.endpoint(Request(scope, receive), **match.groupdict())
                except ServiceError as exc:
                    response = service_error_response(exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
