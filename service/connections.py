"""Bounded HTTP/1.1 connections: uvicorn's httptools protocol with the limits httptools does not have.

httptools accumulates a header of any size (with a cost that grows quadratically in its length) and uvicorn
starts no timer before a request's headers are complete, so one client could hold memory, a CPU and a file
descriptor for as long as it liked. :class:`BoundedHttpToolsProtocol` adds, per connection:

* a **header size limit**: the request line and headers together may take ``max_header_bytes``; beyond that
  the client gets ``431`` and the connection is closed. At most one read (256 KiB) past the limit is parsed.
* a **header timeout**: from the first byte of a request (or from the connection's opening) its headers must
  be complete within ``header_timeout`` seconds, else ``408`` and close;
* a **body timeout**: the whole body must have arrived ``body_timeout`` seconds after the headers, else the
  connection is closed (the route sees the client gone: status 499);
* a **connection cap**: with ``max_connections`` open in this process, a new connection first evicts the
  least recently active connection that is not waiting for a response (idle, or still sending its headers
  or body), so that slow or stalled clients cannot lock out a health probe; only when every connection has a
  request in progress is the new one refused with ``503`` and closed.

Every close for one of these reasons is counted in :data:`CLOSED` and told to :data:`listeners` (the app's
``bnserve_connections_closed_total``).

It also writes a response's head and its body in one ``send`` (:class:`CoalescingTransport`): uvicorn writes
them separately, two system calls and, with ``TCP_NODELAY``, two packets the client must read. Its keep-alive
timer is armed once per idle stretch and checks the connection's last activity when it fires, where uvicorn
cancels and re-arms it on every read and every response. A request the wire path takes (:mod:`service.wire`)
gets no ASGI scope at all: the scope is made once the headers show that the ASGI app serves it.
The class is given to uvicorn as ``http=functools.partial(BoundedHttpToolsProtocol, limits=...)``: the
partial pickles, so worker processes get it too.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

#: Connections closed by this process, by reason (header_too_large, header_timeout, body_timeout, evicted,
#: refused).
CLOSED: Counter[str] = Counter()
#: Called with the reason of every such close: the app of this process counts them in its metrics.
listeners: list[Callable[[str], None]] = []

#: The key of the wire path (:class:`service.wire.WirePath`) in the lifespan state uvicorn gives every
#: connection's protocol: the app's lifespan puts it there once the models are loaded.
WIRE_STATE_KEY = "bnserve.wire"

#: The uvicorn server state of this process (its running request tasks), once it has made a connection.
_server_state: ServerState | None = None


def requests_in_flight() -> int | None:
    """HTTP requests this process is serving now (parsed, not yet answered); None when it serves none through
    this protocol (an app driven in process)."""
    return None if _server_state is None else len(_server_state.tasks)


#: File descriptors kept free of connections: the listening socket, model files, log files, the threads'.
FD_RESERVE = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost; see the module docstring."""

    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


def connection_cap(requested: int) -> int:
    """``requested``, lowered to what the open-files limit allows (raising the soft limit to the hard one).

    Beyond the file limit ``accept`` fails and the server cannot even refuse politely, so the cap must stay
    below it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = requested + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):  # not allowed here: live with the soft limit
            pass
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - FD_RESERVE))


def _count(reason: str) -> None:
    CLOSED[reason] += 1
    for listener in listeners:
        listener(reason)


def _response(status: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` response with the service's JSON error body."""
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _NoEvent:
    """uvicorn's protocol sets its request's ``message_event`` when data or a disconnect arrives; nothing waits
    on a wire request's."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class WireCycle:
    """A request the wire path (:mod:`service.wire`) serves, in the place of uvicorn's cycle (``self.cycle``):
    the attributes the protocol reads and writes, without a scope, an event or a task."""

    __slots__ = ("body", "disconnected", "keep_alive", "more_body", "response_complete", "response_started")

    message_event = _NO_EVENT

    def __init__(self, keep_alive: bool) -> None:
        self.body = b""
        self.more_body = True
        self.keep_alive = keep_alive
        self.disconnected = self.response_started = self.response_complete = False


class CoalescingTransport:
    """A connection's transport that holds a response's head back until its body is written (one ``send`` for
    both), or until the end of the loop iteration if the body takes longer; everything else is the transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a response's head (uvicorn writes it alone)
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit, header and body timeouts and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ConnectionLimits()
        self._awaiting_headers = True  # between requests, or inside a request line / headers
        self._header_bytes = 0  # received since the current request began, while its headers are incomplete
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None  # "header" or "body": which limit the deadline enforces
        self._last_activity = self.loop.time()
        self._refused = False  # turned away by the connection cap
        self._rejected = False  # its headers were too large: what else it sends is ignored
        self._wire: tuple[Any, Any, Any] | None = None  # (cycle, call, wire path) of a request being received
        # Its place in the server's tasks while its body is to come (:meth:`_hold_wire`).
        self._wire_waiting: asyncio.Future[None] | None = None

    # ---- connection ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        global _server_state
        _server_state = self.server_state
        if len(self.connections) >= self.limits.max_connections and not self._evict_one():
            self._refused = True
            self.transport = transport
            _count("refused")
            transport.write(
                _response(
                    503,
                    "Service Unavailable",
                    f"too many open connections (limit {self.limits.max_connections}); retry later",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._arm(self.limits.header_timeout, self._header_timeout, "header")  # a silent client is closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.timeout_keep_alive_task is not None:  # uvicorn's own cancel is a no-op here
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self._refused:
            return
        if self._wire is not None:  # a wire-path request whose body never completed
            _, call, wire = self._wire
            self._wire = None
            self._release_wire()
            wire.gone(self, call)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_activity = self.loop.time()
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._awaiting_headers
            and self._header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._close("header_too_large", self._header_error())
            return
        if self._wire is not None and self._wire_waiting is None:
            self._hold_wire()
        self._rearm()

    def _rearm(self) -> None:
        """The one timer this connection needs now that a read was parsed. Decided after the read, so that a
        request that came whole in one read (the usual case) starts and cancels no timer at all."""
        if self._awaiting_headers:
            if self._header_bytes:  # a request's first bytes: its headers are due
                if self._deadline_kind != "header":
                    self._arm(self.limits.header_timeout, self._header_timeout, "header")
            elif self.cycle is not None and self._deadline is not None:
                self._disarm()  # between requests: uvicorn's keep-alive timer owns an idle connection
        elif self.cycle is not None and self.cycle.more_body:  # inside a body
            if self._deadline_kind != "body":
                self._arm(self.limits.body_timeout, self._body_timeout, "body")
        elif self._deadline is not None:
            self._disarm()

    def _header_error(self) -> bytes | None:
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # a pipelined request's response is being written: no second one in the middle
        return _response(
            431,
            "Request Header Fields Too Large",
            f"the request line and headers exceed the limit of {self.limits.max_header_bytes} bytes",
        )

    # ---- parser callbacks ------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # The scope is made once the headers show that the ASGI app serves the request (_asgi_scope).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        # Headers that arrived in one read were parsed before data_received could count them: count exactly.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._rejected = True
            self._close("header_too_large", self._header_error())
            return
        if self._take_wire():
            return
        self._asgi_scope()
        super().on_headers_complete()

    def _take_wire(self) -> bool:
        """Whether the wire path (:mod:`service.wire`) serves this request, once its body is complete. Never
        with an earlier response pending, writes paused, a root path or uvicorn's concurrency limit set."""
        wire = self.app_state.get(WIRE_STATE_KEY)
        if (
            wire is None
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.flow.write_paused
            or self.root_path
            or self.limit_concurrency is not None
        ):
            return False
        parser = self.parser
        if parser.should_upgrade():
            return False
        call = wire.accept(parser.get_method(), self.url, self.headers)
        if call is None:
            return False
        cycle = WireCycle(parser.get_http_version() != "1.0" and parser.should_keep_alive())
        self.cycle = cycle  # type: ignore[assignment]
        self._wire = (cycle, call, wire)
        return True

    def _asgi_scope(self) -> None:
        """The request's ASGI scope, made as uvicorn makes it when a message begins, with this one's headers."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        wire = self._wire
        if wire is not None and wire[0] is self.cycle:
            wire[0].body += body  # at most MAX_BODY bytes: no flow control
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._awaiting_headers = True
        wire = self._wire
        if wire is not None and wire[0] is self.cycle:
            cycle, call, path = wire
            cycle.more_body = False
            self._wire = None
            self._release_wire()
            path.handle(self, cycle, call)
            return
        super().on_message_complete()

    # ---- between requests ------------------------------------------------------------------------------------
    def on_response_complete(self) -> None:
        """A response is written: the next pipelined request starts, or the connection waits for one. The
        keep-alive timer is armed once per idle stretch, not per response (:meth:`_keep_alive_check`)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._last_activity = self.loop.time()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_check
            )

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn cancels its keep-alive timer on every read and every response; this one stays armed and
        checks when it fires: a call_later and a cancel less per request."""

    def _keep_alive_check(self) -> None:
        """Close the connection if it has been idle (no request begun, none being answered) for the keep-alive
        timeout; if not, look again when it would have been."""
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if (
            not self._awaiting_headers
            or self._header_bytes
            or (cycle is not None and not cycle.response_complete)
        ):
            return  # a request is in progress: its response arms the timer again
        left = self._last_activity + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_check)
        else:
            self.transport.close()

    def _hold_wire(self) -> None:
        """A wire-path request whose body is still to come: in the server's tasks, as its ASGI task would be, so
        that a graceful shutdown waits for it, and cancels it at the end of its timeout (then a JSON 503)."""
        waiting: asyncio.Future[None] = self.loop.create_future()
        waiting.add_done_callback(self._wire_cancelled)
        self._wire_waiting = waiting
        self.tasks.add(waiting)  # type: ignore[arg-type]

    def _release_wire(self) -> None:
        waiting = self._wire_waiting
        if waiting is not None:
            self._wire_waiting = None
            waiting.remove_done_callback(self._wire_cancelled)
            self.tasks.discard(waiting)

    def _wire_cancelled(self, waiting: asyncio.Future[None]) -> None:
        if waiting is not self._wire_waiting or self._wire is None:
            return
        cycle, call, wire = self._wire
        self._wire = None
        self._release_wire()
        wire.cancelled(self, cycle, call)

    # ---- timers ----------------------------------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Any, kind: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)
        self._deadline_kind = kind

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_kind = None

    def _header_timeout(self) -> None:
        self._deadline = self._deadline_kind = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0 and self.cycle is not None:
            return  # an idle kept-alive connection: uvicorn's keep-alive timer owns it
        message = None
        if self._header_bytes:
            message = _response(
                408,
                "Request Timeout",
                f"the request headers did not arrive within {self.limits.header_timeout:g} s",
            )
        self._close("header_timeout", message)

    def _body_timeout(self) -> None:
        self._deadline = self._deadline_kind = None
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._close("body_timeout", None)  # the route sees the client gone (499)

    def _close(self, reason: str, message: bytes | None) -> None:
        _count(reason)
        if message is not None:
            self.transport.write(message)
        self.transport.close()

    # ---- the cap -------------------------------------------------------------------------------------------
    def _evictable(self) -> bool:
        """Idle, or still sending its request: nothing of ours is lost by closing it."""
        if self._refused or self.transport is None or self.transport.is_closing():
            return False
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def _evict_one(self) -> bool:
        """Close the least recently active evictable connection; False when there is none."""
        candidates = [
            c for c in self.connections if isinstance(c, BoundedHttpToolsProtocol) and c._evictable()
        ]
        if not candidates:
            return False
        victim = min(candidates, key=lambda c: c._last_activity)
        victim._disarm()
        victim._close("evicted", None)
        self.connections.discard(victim)
        return True
