"""The per-connection limits of ``service.connections``, attacked over real sockets on 127.0.0.1.

A tiny ASGI app runs under uvicorn with :class:`BoundedHttpToolsProtocol` in a thread; every loop below is
bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from service import connections
from service.connections import BoundedHttpToolsProtocol, ConnectionLimits, connection_cap

LIMITS = ConnectionLimits(max_header_bytes=4096, header_timeout=0.5, body_timeout=0.5, max_connections=4)


class App:
    """``GET /``: 200 ``ok``; ``POST /``: reads the body, notes whether the client went away; ``/hold``: waits."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.release = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None  # the server thread's, for releasing /hold

    def unhold(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.release.set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.loop = asyncio.get_running_loop()
        if scope["path"] == "/hold":
            await self.release.wait()
        if scope["method"] == "POST":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnects += 1
                    return
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[tuple[int, App, uvicorn.Server]]:
    with serving(keep_alive=30) as served:
        yield served


@contextlib.contextmanager
def serving(keep_alive: float) -> Iterator[tuple[int, App, uvicorn.Server]]:
    app = App()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=functools.partial(BoundedHttpToolsProtocol, limits=LIMITS),  # type: ignore[arg-type]
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
    )
    srv = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    connections.CLOSED.clear()
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    try:
        yield port, app, srv
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (bounded by ``timeout``)."""
    s.settimeout(timeout)
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def get(port: int) -> bytes:
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return read_all(s)


def test_oversized_headers_get_431_and_a_close(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:  # far beyond the limit: the server must stop us long before
                s.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(s)
    assert sent < 8 * 1024 * 1024 or answer.startswith(b"HTTP/1.1 431")
    if answer:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        assert b'"error":"the request line and headers exceed the limit of 4096 bytes"' in answer
    assert connections.CLOSED["header_too_large"] == 1
    assert get(port).startswith(b"HTTP/1.1 200")


def test_a_long_url_counts_as_header(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        s.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 431")


def test_headers_just_under_the_limit_pass(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: " + b"a" * 3900 + b"\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 200")


def test_unfinished_headers_time_out_with_408(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never the blank line
        started = time.monotonic()
        answer = read_all(s, timeout=5)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert waited < 4  # closed by the 0.5 s header timeout, not by the read timeout of this test
    assert connections.CLOSED["header_timeout"] == 1


def test_silent_connection_is_closed(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        assert read_all(s, timeout=5) == b""
    assert connections.CLOSED["header_timeout"] == 1


def test_stalled_body_is_closed_and_the_route_sees_the_client_gone(
    server: tuple[int, App, uvicorn.Server],
) -> None:
    port, app, _ = server
    with connect(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        assert read_all(s, timeout=5) == b""
    deadline = time.monotonic() + 5
    while app.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.disconnects == 1
    assert connections.CLOSED["body_timeout"] == 1


def test_keep_alive_requests_each_get_a_fresh_header_timer(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    with connect(port) as s:
        for _ in range(3):  # 3 x 0.3 s on one connection: longer than one header timeout in all
            time.sleep(0.3)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):  # the head and the body may come in two reads
                chunk = s.recv(4096)
                assert chunk, "the connection was closed"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")


def _answer(s: socket.socket) -> bytes:
    answer = b""
    while not answer.endswith(b"ok"):  # the head and the body may come in two reads
        chunk = s.recv(4096)
        assert chunk, "the connection was closed"
        answer += chunk
    return answer


def test_the_keep_alive_timeout_counts_from_the_last_response_however_many_came_before() -> None:
    with serving(keep_alive=0.6) as (port, _, _), connect(port) as s:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # busy for longer than the timeout, never idle for as long
            time.sleep(0.15)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _answer(s).startswith(b"HTTP/1.1 200")
        last = time.monotonic()
        assert read_all(s, timeout=5) == b""  # then idle: closed by the server
        idle = time.monotonic() - last
    assert 0.5 < idle < 3, idle


def test_slow_clients_are_evicted_for_new_ones(server: tuple[int, App, uvicorn.Server]) -> None:
    port, _, _ = server
    slow = [connect(port) for _ in range(LIMITS.max_connections)]
    try:
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\n")  # half a request each
        time.sleep(0.1)
        for _ in range(3):  # more than the cap's worth of slow ones never lock a normal request out
            assert get(port).startswith(b"HTTP/1.1 200")
        assert connections.CLOSED["evicted"] >= 1
    finally:
        for s in slow:
            s.close()


def test_busy_connections_refuse_the_next_one_with_503(server: tuple[int, App, uvicorn.Server]) -> None:
    port, app, _ = server
    busy = [connect(port) for _ in range(LIMITS.max_connections)]
    try:
        for s in busy:
            s.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        answer = get(port)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert b"too many open connections (limit 4)" in answer
        assert connections.CLOSED["refused"] == 1
    finally:
        app.unhold()
        for s in busy:
            s.close()


def test_connection_cap_stays_below_the_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        assert connection_cap(100) == 100
        cap = connection_cap(10**6)  # cannot raise past the hard limit: stays below it
        assert cap <= (hard if hard != resource.RLIM_INFINITY else 10**6)
        if hard != resource.RLIM_INFINITY and hard < 10**6:
            assert cap == hard - connections.FD_RESERVE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class RecordingTransport:
    """What a transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def is_closing(self) -> bool:
        return False


def test_a_response_head_and_body_go_out_in_one_write() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        raw = RecordingTransport()
        t = connections.CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
        t.write(head)
        t.write(b"{}")  # the body, right after: one write of both
        t.write(head)
        await asyncio.sleep(0)  # a body that takes longer: the head leaves at the end of the iteration
        await asyncio.sleep(0)
        t.write(b"{}")
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        t.close()  # nothing held is lost by a close
        assert not t.is_closing()  # everything else is the transport's
        return raw.calls

    calls = asyncio.run(scenario())
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert calls == [
        ("write", head + b"{}"),
        ("write", head),
        ("write", b"{}"),
        ("write", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("close", b""),
    ]
