"""The wire path: small inference requests answered inside the HTTP connection's protocol, without ASGI.

Past the fast path (:mod:`service.fastpath`), what a batch-1 request still cost above its decode, run and
encode was the ASGI machinery around it: uvicorn's task per request, its scope, ``receive`` and ``send``
coroutines, and the service's own ASGI layers awaiting each other (BENCHMARKS.md, the request profile). Here
the connection's protocol (:class:`service.connections.BoundedHttpToolsProtocol`) hands a finished request
straight to :meth:`WirePath.handle`, a plain function: it looks the model up, decodes, queues the rows for the
loop iteration's batched run (:meth:`service.batching.Batcher.submit`), and writes the response bytes from the
batcher's callback; no task, future or coroutine is made for it. The protocol asks as soon as the headers are
parsed, before uvicorn would make the request's scope, event and cycle: a wire request has only a
:class:`service.connections.WireCycle`, the few attributes uvicorn's code reads.

Only a request whose every decision is settled by its headers takes it (:meth:`WirePath.accept`): a POST to a
hot route (V2 ``infer``, V1 ``:predict``, with or without a version) with a Content-Length no larger than
``inline_max_bytes`` (so it is decoded on the loop, and its body arrives without flow control), no
Content-Encoding, Transfer-Encoding or ``Expect``, the right key on a guarded route, tracing off, on a
connection with no earlier response pending, and a URL with neither a query nor an escape. Everything else goes through the ASGI app as before
(``RequestContext``, then the fast path or FastAPI), which answers the same bytes
(``tests/service/test_wire.py``). The request id, the metrics, the access line and the 499 of a client that leaves
mid-body are the same as :class:`service.middleware.RequestContext`'s, through the same function
(:func:`service.middleware.account`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from service.auth import ApiKey
from service.connections import WireCycle
from service.dataplane import Decoded, RequestInfo, request_id
from service.errors import ServiceError
from service.logs import escape
from service.middleware import CLIENT_CLOSED, account, error_response, service_error_response
from service.routes import Route
from service.state import ServiceState

log = logging.getLogger("bnserve")

#: uvicorn pauses reading a body past this many bytes until the app reads it; the wire path never reads
#: through ``receive``, so its bodies stay below (uvicorn's ``HIGH_WATER_LIMIT``).
MAX_BODY = 65536


#: Paths remembered by :meth:`WirePath.accept` before it starts over (any path of a hot route's shape, real
#: model or not, can be sent).
_MAX_PATHS = 1024


class Connection(Protocol):
    """What the wire path needs of a connection's protocol."""

    transport: Any
    client: tuple[str, int] | None
    server_state: Any  # uvicorn's: its default_headers (the Date) are renewed every second

    def on_response_complete(self) -> None: ...


@dataclass
class Call:
    """A request the wire path took at its headers, until it is answered."""

    route: Route
    params: dict[str, str | None]
    path: str
    headers: list[tuple[bytes, bytes]]
    request_id: str | None
    started: float


class WirePath:
    """Serves the hot routes' small requests from the protocol's callbacks; see the module docstring."""

    def __init__(self, state: ServiceState, routes: Sequence[Route], auth: ApiKey) -> None:
        self.state = state
        self.routes = tuple(r for r in routes if r.prepare is not None)
        self.auth = auth
        settings = state.settings
        self.max_body = min(settings.inline_max_bytes, settings.max_body_bytes, MAX_BODY)
        self._defaults: list[tuple[bytes, bytes]] | None = None  # the server's default headers, last seen
        self._default_lines = b""  # ... as header lines
        # The hot routes' paths seen (a few: one per model and version), with their route and parameters.
        self._paths: dict[bytes, tuple[str, Route, dict[str, str | None]]] = {}

    def accept(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> Call | None:
        """The call for a request whose headers were just parsed (``url`` as it came, ``headers`` with
        lower-case names), or None when the ASGI app must serve it. A URL with a query, an escape or a scheme
        goes to the app, which parses it fully."""
        if method != b"POST" or self.state.tracing is not None or not self.max_body:
            return None
        if url[:1] != b"/" or b"?" in url or b"%" in url or not url.isascii():
            return None
        found = self._paths.get(url)
        if found is None:
            found = self._route(url)
            if found is None:
                return None
        path, route, params = found
        length = rid = None
        for name, value in headers:  # a plain loop: this runs on every inference request
            if name == b"content-length":
                length = value
            elif name == b"x-request-id":
                rid = value  # the last one, as RequestContext's dict of the headers keeps
            elif name in (b"content-encoding", b"transfer-encoding", b"expect"):
                return None
        if length is None or not length.isdigit() or int(length) > self.max_body:
            return None
        if route.guarded and not self.auth.allows(headers):
            return None  # FastAPI's route answers the 401
        return Call(
            route, params, path, headers, None if rid is None else rid.decode("latin-1"),
            time.perf_counter(),
        )  # fmt: skip

    def _route(self, url: bytes) -> tuple[str, Route, dict[str, str | None]] | None:
        """The path, the hot route ``url`` is for and its parameters (kept for the next request to the same
        URL), or None."""
        path = url.decode("ascii")
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                if len(self._paths) >= _MAX_PATHS:
                    self._paths.clear()
                found = self._paths[url] = (path, route, match.groupdict())
                return found
        return None

    def handle(self, conn: Connection, cycle: WireCycle, call: Call) -> None:
        """The request's body is complete: decode it and queue its rows (answered from :meth:`_done`), or answer
        its error now."""
        info = RequestInfo(request_id(call.request_id))
        try:
            assert call.route.prepare is not None
            prepared = call.route.prepare(info, bytes(cycle.body), call.headers, **call.params)
            decoded = prepared.decode(*prepared.args)
            decoded.model.check_rows(decoded.x)
        except Exception as exc:
            self._fail(conn, cycle, call, info, exc)
            return
        offload = self.state.offload
        batcher = None if offload is None else offload.batcher
        if batcher is None:  # batching off: this request's own run, here
            try:
                results = decoded.model.predict(decoded.x, decoded.hidden, decoded.categorical)
            except Exception as exc:
                self._fail(conn, cycle, call, info, exc)
                return
            self._done(conn, cycle, call, info, decoded, results)
            return
        batcher.submit(
            decoded.model, decoded.x, decoded.hidden, decoded.categorical,
            lambda outcome: self._done(conn, cycle, call, info, decoded, outcome),
        )  # fmt: skip

    def _done(
        self,
        conn: Connection,
        cycle: WireCycle,
        call: Call,
        info: RequestInfo,
        decoded: Decoded[Any],
        outcome: dict[str, np.ndarray] | BaseException,
    ) -> None:
        if isinstance(outcome, BaseException):
            self._fail(conn, cycle, call, info, outcome)
            return
        try:
            reply = decoded.encode(outcome)
        except Exception as exc:
            self._fail(conn, cycle, call, info, exc)
            return
        self._send(conn, cycle, call, info, 200, reply.raw_headers(), reply.body)

    def _fail(
        self, conn: Connection, cycle: WireCycle, call: Call, info: RequestInfo, exc: BaseException
    ) -> None:
        """The JSON answer to a typed error, as the fast path's; anything else is logged and answered 500, as
        ``RequestContext`` does."""
        if isinstance(exc, ServiceError):
            response = service_error_response(exc)
        else:
            log.error(
                "unhandled error in request %s",
                info.request_id,
                exc_info=exc,
                extra={"request_id": info.request_id},
            )
            response = error_response(500, f"internal server error (request id {info.request_id})")
        self._send(conn, cycle, call, info, response.status_code, response.raw_headers, bytes(response.body))

    def _send(
        self,
        conn: Connection,
        cycle: WireCycle,
        call: Call,
        info: RequestInfo,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """Write the whole response in one ``write`` (as uvicorn writes a head: its default headers first, then
        the response's, the request id last, ``connection: close`` when the connection ends), then finish the
        cycle as uvicorn does: counted, the next pipelined request started or the keep-alive timer armed."""
        transport = conn.transport
        if not cycle.disconnected and not transport.is_closing():
            defaults = conn.server_state.default_headers
            if defaults is not self._defaults:  # a new second: uvicorn made a new list
                self._defaults = defaults
                self._default_lines = b"".join([name + b": " + value + b"\r\n" for name, value in defaults])
            content = [STATUS_LINE[status], self._default_lines]
            for name, value in headers:
                content += (name, b": ", value, b"\r\n")
            content += (b"x-request-id: ", info.request_id.encode(), b"\r\n")
            if not cycle.keep_alive:
                content.append(b"connection: close\r\n")
            content += (b"\r\n", body)
            transport.write(b"".join(content))
        cycle.response_started = cycle.response_complete = True
        if not cycle.keep_alive:
            transport.close()
        self._account(conn, call, info, status)
        conn.on_response_complete()

    def cancelled(self, conn: Connection, cycle: WireCycle, call: Call) -> None:
        """The server stops and its graceful timeout ended before the body did: a JSON 503 and the connection
        closed, as ``RequestContext`` answers a cancelled request."""
        info = RequestInfo(request_id(call.request_id))
        log.info(
            "request %s cancelled: the server is shutting down", info.request_id,
            extra={"request_id": info.request_id},
        )  # fmt: skip
        cycle.keep_alive = False  # _send writes connection: close
        response = error_response(503, "the server is shutting down")
        self._send(conn, cycle, call, info, 503, response.raw_headers, bytes(response.body))

    def gone(self, conn: Connection, call: Call) -> None:
        """The client left before its body was complete: status 499 and one INFO line, as ``RequestContext``."""
        info = RequestInfo(request_id(call.request_id))
        log.info(
            "client went away before the request was complete (request %s, POST %s)",
            info.request_id, escape(call.path[:200]), extra={"request_id": info.request_id},
        )  # fmt: skip
        self._account(conn, call, info, CLIENT_CLOSED)

    def _account(self, conn: Connection, call: Call, info: RequestInfo, status: int) -> None:
        client = conn.client[0] if conn.client else None
        account(self.state, "POST", call.path, client, info, status, time.perf_counter() - call.started)
