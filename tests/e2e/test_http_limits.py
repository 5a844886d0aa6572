"""What an attacker or a flaky network does to a live server (``python -m service``) on 127.0.0.1.

One test per item of the hardening issue: header floods, clients that never finish their headers or body, more
connections than the cap, clients that go away mid-body (also at shutdown), log forging, the uvicorn access
log with workers, HEAD, the offline docs, SIGINT during start-up. Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from benchmarks.harness import MODELS, LiveServer

ROW = [0.0] * 64
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}).encode()


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes, within ``timeout`` seconds."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def request(server: LiveServer, raw: bytes, timeout: float = 10.0) -> bytes:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_all(sock, timeout)


def get(server: LiveServer, path: str, method: str = "GET") -> tuple[int, bytes]:
    reply = request(server, f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def statuses(server: LiveServer) -> dict[str, float]:
    """``bnserve_requests_total`` by status, summed over the other labels."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for status, value in re.findall(
        r'^bnserve_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', text, re.M
    ):
        out[status] = out.get(status, 0.0) + float(value)
    return out


def drain(server: LiveServer, seconds: float = 1.0) -> list[str]:
    """The lines the server writes within ``seconds``."""
    lines = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines.append(server.lines.get(timeout=0.05))
        except Exception:  # queue.Empty
            continue
    return lines


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(
        "--model-repository", str(MODELS), "--workers", "1", "--header-timeout", "1", "--body-timeout", "1",
        "--max-header-bytes", "8192", "--max-connections", "16",
    )  # fmt: skip
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_a_header_flood_gets_431_and_health_keeps_answering(server: LiveServer) -> None:
    floods = [connect(server) for _ in range(4)]
    try:
        answers = []
        for sock in floods:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Big: ")
            try:
                for _ in range(32):  # 2 MiB each at most: far beyond the 8 KiB limit
                    sock.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answers.append(read_all(sock, 5))
            assert get(server, "/v2/health/live")[0] == 200
        for answer in answers:  # a 431 when the client could still read it, else a plain close
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert any(a.startswith(b"HTTP/1.1 431") for a in answers)
    finally:
        for sock in floods:
            sock.close()


def test_unfinished_headers_get_408_after_the_header_timeout(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        answer = read_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 8
    assert b'{"error":"the request headers did not arrive within 1 s"}' in answer


def test_more_slow_clients_than_the_cap_do_not_lock_health_out(server: LiveServer) -> None:
    slow = [connect(server) for _ in range(40)]  # the cap is 16
    try:
        for sock in slow:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        for _ in range(5):
            started = time.monotonic()
            assert get(server, "/v2/health/ready")[0] == 200
            assert time.monotonic() - started < 2
    finally:
        for sock in slow:
            sock.close()


def test_a_client_that_leaves_mid_body_is_a_499_with_one_info_line(server: LiveServer) -> None:
    before = statuses(server)
    drain(server, 0.2)
    head = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(BODY)}\r\n"
        "X-Request-ID: gone-mid-body\r\n\r\n"
    ).encode()
    with connect(server) as sock:
        sock.sendall(head + BODY[:100])
        time.sleep(0.2)
    lines = drain(server, 1.5)
    after = statuses(server)
    assert after.get("499", 0) - before.get("499", 0) == 1
    assert all(after.get(s, 0) == before.get(s, 0) for s in after if s.startswith("5"))
    mentions = [line for line in lines if "gone-mid-body" in line and "access" not in line]
    assert len(mentions) == 1 and " INFO " in mentions[0], lines
    assert not any("Traceback" in line or "ERROR" in line for line in lines), lines


def test_a_stalled_body_is_closed_after_the_body_timeout_as_a_499(server: LiveServer) -> None:
    before = statuses(server)
    head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    with connect(server) as sock:
        sock.sendall(head + BODY[:100])
        started = time.monotonic()
        assert read_all(sock, 10) == b""
        assert time.monotonic() - started < 8
    time.sleep(0.2)
    assert statuses(server).get("499", 0) - before.get("499", 0) == 1


def test_log_fields_cannot_forge_lines(server: LiveServer) -> None:
    drain(server, 0.2)
    request(server, b"GET /v2/x%0A2026-01-01%20INFO%20bnserve.access:%20forged%1B[31m HTTP/1.1\r\nHost: t\r\n"
            b"Connection: close\r\n\r\n")  # fmt: skip
    lines = drain(server, 1.0)
    access = [line for line in lines if "bnserve.access" in line]
    assert len(access) == 1, lines
    assert "\\x0a2026-01-01 INFO bnserve.access: forged\\x1b[31m 404" in access[0]
    assert not any("\x1b" in line for line in lines)


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/models/digits", "/metrics"])
def test_head_where_get_exists(server: LiveServer, path: str) -> None:
    status, body = get(server, path, method="HEAD")
    assert (status, body) == (200, b"")


def test_head_on_a_post_route_is_405(server: LiveServer) -> None:
    assert get(server, "/v2/models/digits/infer", method="HEAD")[0] == 405


def test_docs_are_served_from_the_package(server: LiveServer) -> None:
    status, html = get(server, "/docs")
    assert status == 200
    scripts = re.findall(rb'(?:src|href)="([^"]+)"', html)
    assert scripts and not any(s.startswith((b"http:", b"https:", b"//")) for s in scripts), scripts
    for asset in scripts:
        status, body = get(server, asset.decode())
        assert status == 200 and len(body) > 1000
    assert get(server, "/redoc")[0] == 200


def test_shutdown_with_stalled_clients_writes_no_traceback() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--workers", "1", "--graceful-timeout", "1")
    try:
        srv.wait_ready()
        head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(BODY)}\r\n\r\n"
        stalled = [connect(srv) for _ in range(10)]
        for sock in stalled:
            sock.sendall(head.encode() + BODY[:50])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        answers = [read_all(sock, 15) for sock in stalled]
        assert srv.proc.wait(20) == 0
        out = srv.output() + "\n".join(drain(srv, 0.5))
        assert "Traceback" not in out and "CancelledError" not in out, out
        for answer in answers:  # a JSON 503 (the server is stopping), never uvicorn's plain-text 500
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:100]
            assert b"Internal Server Error" not in answer
    finally:
        srv.stop()


def test_workers_without_access_log_write_no_access_lines() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--workers", "2", "--access-log", "false")
    try:
        srv.wait_ready()
        for _ in range(20):
            assert get(srv, "/v2/health/live")[0] == 200
        lines = drain(srv, 1.0)
    finally:
        srv.stop()
    everything = srv.seen + lines + srv.output().splitlines()
    assert not any("uvicorn.access" in line or "bnserve.access" in line for line in everything)


def test_workers_with_access_log_write_one_line_per_request() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--workers", "2")
    try:
        srv.wait_ready()
        drain(srv, 0.5)
        for _ in range(10):
            assert get(srv, "/v2/health/live")[0] == 200
        lines = drain(srv, 1.5)
    finally:
        srv.stop()
    assert not any("uvicorn.access" in line for line in lines)
    assert sum("bnserve.access: GET /v2/health/live 200" in line for line in lines) == 10


def test_sigint_during_start_up_is_quiet() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--workers", "1")
    try:
        time.sleep(0.3)  # importing or loading: before the server is up
        srv.proc.send_signal(signal.SIGINT)
        code = srv.proc.wait(30)
    finally:
        srv.stop()
    out = srv.output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert code in (0, 1, 130, -2), code


def _sigint_ignored(_: object) -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_spawned_worker_ignores_sigint_from_its_first_import_of_service() -> None:
    """A process spawned as uvicorn spawns its workers, whose unpickling imports ``service`` (the app factory's
    package): SIGINT ignored there from then on, so a Ctrl-C mid-start is no traceback; this process, which
    imported ``service`` as the server itself does, keeps Python's handler."""
    from service.server import AppFactory

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_sigint_ignored, (AppFactory,)) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
